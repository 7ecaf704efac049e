"""`python -m zssr_client upscale IN OUT`: exit 0 and the image; or one line naming the API's error."""
from __future__ import annotations

import io
import os
import subprocess
import sys

from PIL import Image

from tests.e2e.helpers import png_bytes
from jobs.redis_server import free_port


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZSSR_")}
    return subprocess.run([sys.executable, "-m", "zssr_client", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_upscale_writes_the_image_with_a_progress_bar(api_url, api_key, tmp_path):
    source, target = tmp_path / "in.png", tmp_path / "out.jpg"
    source.write_bytes(png_bytes(40, 30))
    done = run_cli("upscale", str(source), str(target), "--api", api_url, "--key", api_key, "--scale", "2.5",
                   "--method", "bicubic")
    assert done.returncode == 0, done.stderr
    image = Image.open(io.BytesIO(target.read_bytes()))
    assert (image.format, image.size) == ("JPEG", (100, 75))  # the format from OUT's extension
    assert done.stderr.rstrip().endswith("] 100% done") and done.stdout == ""  # the bar, redrawn to its end


def one_line_error(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 1 and done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("zssr_client: error: ")
    return lines[0]


def test_an_api_error_is_one_line_with_its_code(api_url, api_key, tmp_path):
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    line = one_line_error(run_cli("upscale", str(text), str(tmp_path / "out.png"), "--api", api_url, "--key", api_key))
    assert "415 unsupported_image: " in line
    line = one_line_error(run_cli("upscale", str(text), str(tmp_path / "out.png"), "--api", api_url, "--key", "wrong"))
    assert "401 unauthorized: " in line
    assert not (tmp_path / "out.png").exists()


def test_a_missing_input_or_an_unreachable_api_is_one_line(tmp_path):
    line = one_line_error(run_cli("upscale", str(tmp_path / "absent.png"), str(tmp_path / "out.png")))
    assert "absent.png" in line and "No such file" in line
    source = tmp_path / "in.png"
    source.write_bytes(png_bytes())
    line = one_line_error(run_cli("upscale", str(source), str(tmp_path / "out.png"), "--api",
                                  f"http://127.0.0.1:{free_port()}", "--max-retries", "0"))
    assert "ConnectError" in line


def test_bad_arguments_exit_2():
    assert run_cli("upscale", "only-one").returncode == 2

"""`python -m sr`: outputs, formats, and exit codes with one-line errors (in-process for most, a few real processes)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageCms

import sr
from sr.cli import main

ROOT = Path(__file__).resolve().parents[2]
SRGB_PROFILE = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
TINY = {"max_iters": 20, "min_iters": 20, "crop_size": 16, "width": 8, "depth": 3, "run_test_every": 10,
        "back_projection_iters": [1], "output_flip": False, "channels_last": False, "precision": "float32",
        "batch_size": 1, "test_crop": 0, "checkpoint_every": 0}
needs_core = pytest.mark.skipif(not hasattr(sr, "config_for"), reason="the ZSSR core has not landed yet")


def _save(path: Path, mode: str = "RGB", size=(24, 20), **options) -> Path:
    width, height = size
    y, x = np.mgrid[0:height, 0:width]
    wave = (128 + 100 * np.sin(x / 3.0) * np.cos(y / 4.0)).astype(np.uint8)
    planes = {"RGB": [wave, wave[::-1], wave[:, ::-1]], "L": [wave],
              "RGBA": [wave, wave[::-1], wave[:, ::-1], np.where(x < width // 2, 0, 255).astype(np.uint8)]}
    if mode == "I;16":
        image = Image.fromarray(wave.astype(np.uint16) * 257 + 3)
    else:
        stack = np.stack(planes[mode], axis=2)
        image = Image.fromarray(stack[:, :, 0] if mode == "L" else stack)
    image.save(path, **options)
    return path


def _run(*argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "sr", *argv], capture_output=True, text=True, env=env, timeout=120)


def _one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    return lines[0]


def test_a_real_process_upscales_and_exits_zero(tmp_path):
    out = tmp_path / "out.png"
    done = _run("upscale", str(_save(tmp_path / "in.png")), str(out), "--method", "bicubic", "--scale", "2,3")
    assert done.returncode == 0, done.stderr
    assert Image.open(out).size == (48, 60)
    assert "wrote" in done.stderr and "Traceback" not in done.stderr


def test_a_real_process_gives_one_error_line_and_exit_two_for_bad_input(tmp_path):
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("hello")
    done = _run("upscale", str(not_an_image), str(tmp_path / "out.png"), "--method", "bicubic")
    assert done.returncode == 2
    assert _one_error_line(done.stderr) == f"error: {not_an_image}: not an image Pillow can read"
    done = _run("upscale", str(tmp_path / "in.png"), str(tmp_path / "out.png"), "--scale", "x2")
    assert done.returncode == 2 and "'x2' is not a number" in _one_error_line(done.stderr)


@pytest.mark.parametrize(("argv", "message"), [
    (["upscale", "{missing}", "{out}"], "{missing}: no such file"),
    (["upscale", "{image}", "{out}", "--scale", "1"], "each above 1"),
    (["upscale", "{image}", "{out}", "--scale", "2,3,4"], "one number or 'sx,sy'"),
    (["upscale", "{image}", "{tmp}/out.gifx"], "cannot tell the output format from '.gifx'"),
    (["upscale", "{image}", "{tmp}/no/such/folder/out.png"], "the folder {tmp}/no/such/folder does not exist"),
    (["upscale", "{image}", "{out}", "--method", "nearest"], "invalid choice: 'nearest'"),
    (["upscale", "{image}", "{out}", "--config", "{bad_json}"], "{bad_json}: not valid JSON"),
    (["upscale", "{image}", "{out}", "--config", "{list_json}"], "must be a JSON object"),
    (["upscale", "{image}", "{out}", "--config", "{missing}"], "{missing}: no such file"),
    (["evaluate", "{tmp}/empty"], "{tmp}/empty: no images in this folder"),
    (["evaluate", "{missing}"], "{missing}: no such file or folder"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
])
def test_bad_input_is_one_error_line_and_exit_two(tmp_path, capsys, argv, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad.json").write_text('{"width": 8,')
    (tmp_path / "list.json").write_text("[1, 2]")
    names = {"image": _save(tmp_path / "in.png"), "out": tmp_path / "out.png", "missing": tmp_path / "nope.png",
             "tmp": tmp_path, "bad_json": tmp_path / "bad.json", "list_json": tmp_path / "list.json"}
    assert main([part.format(**names) for part in argv]) == 2
    assert message.format(**names) in _one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "out.png").exists()


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "I;16"])
def test_png_output_keeps_the_mode_and_the_icc_profile(tmp_path, capsys, mode):
    source = _save(tmp_path / "in.png", mode, icc_profile=SRGB_PROFILE)
    assert main(["upscale", str(source), str(tmp_path / "out.png"), "--method", "bicubic", "--quiet"]) == 0
    out = Image.open(tmp_path / "out.png")
    assert out.mode == mode and out.size == (48, 40) and out.info.get("icc_profile") == SRGB_PROFILE


def test_jpeg_output_of_an_image_with_alpha_is_composited_onto_white_and_says_so(tmp_path, capsys):
    source = _save(tmp_path / "in.png", "RGBA", icc_profile=SRGB_PROFILE)
    assert main(["upscale", str(source), str(tmp_path / "out.jpg"), "--method", "bicubic", "--quiet"]) == 0
    assert "composited onto white" in capsys.readouterr().err
    out = Image.open(tmp_path / "out.jpg")
    assert out.mode == "RGB" and out.info.get("icc_profile") == SRGB_PROFILE
    assert min(out.getpixel((2, 20))) >= 250  # the left half was fully transparent: white now


@pytest.mark.parametrize(("suffix", "mode"), [(".jpg", "L"), (".webp", "RGB"), (".tif", "I;16")])  # WebP has no grey
def test_sixteen_bit_grey_stays_sixteen_bit_where_the_format_can_hold_it(tmp_path, capsys, suffix, mode):
    source = _save(tmp_path / "in.png", "I;16")
    assert main(["upscale", str(source), str(tmp_path / f"out{suffix}"), "--method", "bicubic", "--quiet"]) == 0
    assert Image.open(tmp_path / f"out{suffix}").mode == mode
    assert ("written as 8-bit" in capsys.readouterr().err) == (mode != "I;16")


@needs_core
def test_an_image_under_four_pixels_is_refused(tmp_path, capsys):
    source = _save(tmp_path / "in.png", size=(3, 40))
    assert main(["upscale", str(source), str(tmp_path / "out.png"), "--method", "bicubic"]) == 2
    assert "at least 4 pixels" in _one_error_line(capsys.readouterr().err)


@needs_core
def test_an_unknown_config_field_is_named(tmp_path, capsys):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({**TINY, "widht": 8}))
    assert main(["upscale", str(_save(tmp_path / "in.png")), str(tmp_path / "out.png"), "--config", str(config)]) == 2
    assert "widht" in _one_error_line(capsys.readouterr().err)


@needs_core
def test_a_tiny_zssr_run_shows_progress_and_writes_the_image(tmp_path):
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(TINY))
    out = tmp_path / "out.webp"
    done = _run("upscale", str(_save(tmp_path / "in.png", "RGBA")), str(out), "--preset", "fast", "--config",
                str(config), "--device", "cpu", "--seed", "3")
    assert done.returncode == 0, done.stderr
    assert "training" in done.stderr and "wrote" in done.stderr
    assert Image.open(out).size == (48, 40) and Image.open(out).mode == "RGBA"


@needs_core
def test_evaluate_prints_the_table_and_the_mean_gain(tmp_path, capsys):
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(TINY))
    _save(tmp_path / "a.png", size=(40, 32))
    _save(tmp_path / "b.png", "L", size=(32, 40))
    assert main(["evaluate", str(tmp_path), "--preset", "fast", "--config", str(config), "--quiet"]) == 0
    table = capsys.readouterr().out
    assert "| a.png | 20x16 -> 40x32 |" in table and "| b.png | 16x20 -> 32x40 |" in table
    assert "| **mean** | 2 images |" in table and "fast+config: mean gain over bicubic" in table


@needs_core
def test_ctrl_c_stops_a_run_with_exit_130_and_one_line(tmp_path):
    config = tmp_path / "long.json"
    config.write_text(json.dumps({**TINY, "max_iters": 100_000, "min_iters": 100_000}))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen([sys.executable, "-m", "sr", "upscale", str(_save(tmp_path / "in.png")),
                                str(tmp_path / "out.png"), "--config", str(config), "--device", "cpu"],
                               stderr=subprocess.PIPE, text=True, env=env)
    stderr: list[str] = []
    reader = threading.Thread(target=lambda: stderr.extend(iter(lambda: process.stderr.read(1), "")), daemon=True)
    reader.start()
    deadline = time.monotonic() + 60
    while "training" not in "".join(stderr) and time.monotonic() < deadline:
        time.sleep(0.1)
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=30) == 130
    reader.join(timeout=5)
    text = "".join(stderr)
    assert text.rstrip().splitlines()[-1].endswith("interrupted") and "Traceback" not in text
    assert not (tmp_path / "out.png").exists()

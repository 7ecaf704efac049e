"""The API as users run it: under uvicorn on a real socket, and the whole `python -m api --dev` stack."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from api.main import create_app
from tests.e2e.helpers import png_bytes
from tests.live import serve
from jobs.redis_server import free_port
from jobs.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def live_api(settings, worker_process):
    """The API under uvicorn in a thread, with a 50 kB upload limit."""
    app = create_app(Settings(**{**settings.model_dump(), "max_upload_bytes": 50_000}))
    with serve(app) as base_url:
        yield base_url


def _raw_request(base_url: str, head: str, chunks) -> bytes:
    """Send a request by hand (chunked bodies without Content-Length), return the raw answer."""
    host, port = base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(head.encode())
        try:
            for chunk in chunks:
                sock.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            sock.sendall(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed before the whole body went out: that is the point
        answer = b""
        while b"\r\n\r\n" not in answer:
            data = sock.recv(65536)
            if not data:
                break
            answer += data
        return answer


def test_a_chunked_body_over_the_limit_is_stopped_while_streaming(live_api):
    sent = []

    def endless():
        yield (b'--xyz\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
               b"Content-Type: image/png\r\n\r\n")
        for _ in range(10_000):  # 640 MB if the server read it all; it must stop after ~114 kB
            sent.append(1)
            yield b"\0" * 65536

    head = ("POST /v1/jobs HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n"
            "Content-Type: multipart/form-data; boundary=xyz\r\n\r\n")
    answer = _raw_request(live_api, head, endless())
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b'"payload_too_large"' in answer or b"413" in answer
    assert len(sent) < 100


def test_a_declared_length_over_the_limit_is_refused_before_reading(live_api):
    response = httpx.post(f"{live_api}/v1/jobs", content=b"\0" * 200_000,
                          headers={"content-type": "multipart/form-data; boundary=xyz"})
    assert response.status_code == 413 and response.json()["error"]["code"] == "payload_too_large"


def test_submit_poll_fetch_over_http(live_api):
    with httpx.Client(base_url=live_api, timeout=10) as http:
        job = http.post("/v1/jobs", files={"image": ("a.png", png_bytes(20, 10), "image/png")},
                        data={"method": "bicubic", "scale": "3"}).json()
        deadline = time.monotonic() + 20
        while (state := http.get(f"/v1/jobs/{job['id']}").json())["status"] not in ("succeeded", "failed"):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert state["status"] == "succeeded" and state["output"]["width"] == 60
        assert http.get(f"/v1/jobs/{job['id']}/result").headers["content-type"] == "image/png"


@pytest.mark.slow
def test_the_dev_stack_starts_serves_a_job_and_stops_everything():
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("UPSCALER_") and k != "REDIS_URL"}
    env.update(PYTHONPATH=str(ROOT), UPSCALER_PORT=str(port))
    process = subprocess.Popen([sys.executable, "-m", "api", "--dev", "--log-level", "warning"], cwd=ROOT, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, process.stdout.read().decode()[-2000:]
            try:
                if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the dev stack did not become ready"
            time.sleep(0.2)
        job = httpx.post(f"{base}/v1/jobs", files={"image": ("a.png", png_bytes(), "image/png")},
                         data={"method": "bicubic"}).json()
        while (state := httpx.get(f"{base}/v1/jobs/{job['id']}").json())["status"] not in ("succeeded", "failed"):
            assert time.monotonic() < deadline + 30
            time.sleep(0.1)
        assert state["status"] == "succeeded"
        children = _descendants(process.pid)
        assert len(children) >= 3  # redis-server, the worker supervisor and its two workers
    finally:
        output = _stop(process, signal.SIGINT)
    assert process.returncode == 0, output[-2000:]
    assert "http://127.0.0.1:%d" % port in output
    assert not [pid for pid in children if _alive(pid)], "the dev stack left processes behind"


def _stop(process: subprocess.Popen, signum: int) -> str:
    """Send `signum`, wait up to a minute for the exit, return the output; kill the whole group if it hangs."""
    process.send_signal(signum)
    try:
        return process.communicate(timeout=60)[0].decode()
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        raise


def _descendants(pid: int) -> list[int]:
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        try:
            children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
        except OSError:
            continue
        found += [int(c) for c in children]
        frontier += [int(c) for c in children]
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.slow
def test_api_processes_listen_on_a_socket_each_and_one_that_dies_is_replaced(redis_server):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("UPSCALER_")}
    env.update(PYTHONPATH=str(ROOT), REDIS_URL=redis_server.url)
    process = subprocess.Popen([sys.executable, "-m", "api", "--workers", "2", "--port", str(port),
                                "--log-level", "warning"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        first = _wait_for_listeners(process, port, 2)
        assert process.pid not in first  # the supervisor holds no socket: each process binds its own once started
        assert all(httpx.get(f"{base}/healthz", timeout=5).status_code == 200 for _ in range(8))
        os.kill(min(first), signal.SIGKILL)
        second = _wait_for_listeners(process, port, 2, gone=min(first))
        assert max(first) in second  # the other one served on meanwhile
        assert all(httpx.get(f"{base}/healthz", timeout=5).status_code == 200 for _ in range(8))
    finally:
        output = _stop(process, signal.SIGTERM)
    assert process.returncode == 0, output[-2000:]
    assert not _listening_pids(port), "a process still listens after SIGTERM"


def test_api_processes_that_cannot_bind_their_port_stop_with_an_error(redis_server):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if not k.startswith("UPSCALER_")}
        env.update(PYTHONPATH=str(ROOT), REDIS_URL=redis_server.url)
        result = subprocess.run([sys.executable, "-m", "api", "--workers", "2", "--port", str(port), "--log-level",
                                 "warning"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 3, result.stderr[-2000:]  # uvicorn's start-up failure code
    assert "address already in use" in result.stderr


def _wait_for_listeners(process: subprocess.Popen, port: int, count: int, gone: int | None = None,
                        timeout: float = 60) -> set[int]:
    deadline = time.monotonic() + timeout
    while True:
        assert process.poll() is None, process.stdout.read().decode()[-2000:]
        pids = _listening_pids(port)
        if len(pids) == count and gone not in pids:
            return pids
        assert time.monotonic() < deadline, f"listening on {port}: {pids}, expected {count} (not {gone})"
        time.sleep(0.2)


def _listening_pids(port: int) -> set[int]:
    """The processes holding a TCP socket that listens on `port` (from /proc: Linux, as CI)."""
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
            inodes.add(f"socket:[{fields[9]}]")
    pids = set()
    for folder in Path("/proc").iterdir():
        if not folder.name.isdigit():
            continue
        try:
            if any(os.readlink(fd) in inodes for fd in (folder / "fd").iterdir()):
                pids.add(int(folder.name))
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return pids

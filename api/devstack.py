"""`python -m api --dev`: the one-machine stack for a newcomer (CONTRACT.md section 2).

Redis (REDIS_URL when set, else a private redis-server in a temporary directory), one `python -m worker`
consuming every queue, and the API under uvicorn. Ctrl-C or SIGTERM stops all three, in that order reversed.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import uvicorn

from api.main import create_app
from worker.redis_server import RedisServer, RedisUnavailable
from worker.settings import SettingsError, load_settings


def _exit_on_sigterm(signum, _frame):
    raise SystemExit(0)  # unwinds through the finally blocks below, which stop the children


def run_dev(*, host: str | None, port: int | None, log_level: str = "info") -> int:
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    os.environ["UPSCALER_DEV"] = "true"  # local mode, for the worker too
    workdir = Path(tempfile.mkdtemp(prefix="upscaler-dev-"))
    redis_server = worker = None
    try:
        if not os.environ.get("REDIS_URL"):
            redis_server = RedisServer(workdir / "redis").start()
            os.environ["REDIS_URL"] = redis_server.url
        settings = load_settings()
        host, port = host or settings.host, port if port is not None else settings.port
        worker = subprocess.Popen([sys.executable, "-m", "worker", "--loglevel", log_level.upper()])
        where = "embedded redis-server" if redis_server else "REDIS_URL"
        print(f"ZSSR upscaler (dev): http://{host}:{port}  docs: http://{host}:{port}/docs  "
              f"Redis: {where}; one worker (all queues). Ctrl-C stops all.", file=sys.stderr, flush=True)
        server = uvicorn.Server(uvicorn.Config(create_app(settings), host=host, port=port, log_level=log_level))
        server.run()
        return 0
    except (RedisUnavailable, SettingsError) as exc:
        print(f"api --dev: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0
    finally:
        if worker is not None:
            _stop(worker)
        if redis_server is not None:
            redis_server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def _stop(process: subprocess.Popen, timeout: float = 30) -> None:
    if process.poll() is None:
        process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()

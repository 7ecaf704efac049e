"""`python -m api`: the HTTP API. `python -m api --dev`: Redis, one worker and the API on this machine.

  python -m api                         # UPSCALER_HOST:UPSCALER_PORT (default 127.0.0.1:8000)
  python -m api --workers 4             # four API processes on one port (a socket each, SO_REUSEPORT)
  python -m api --dev                   # the whole stack; an embedded Redis when REDIS_URL is unset
"""
from __future__ import annotations

import argparse
import copy
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import uvicorn

from api.main import create_app
from api.serving import LOOP, http_protocol, serve_processes
from jobs.redis_server import RedisServer, RedisUnavailable
from jobs.settings import Settings, SettingsError, UnsafeSettings, load_settings


APP = "api.main:app_from_env"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m api", description="The ZSSR upscaler HTTP API.")
    parser.add_argument("--dev", action="store_true",
                        help="run Redis (embedded unless REDIS_URL is set), one worker and the API; Ctrl-C stops all")
    parser.add_argument("--host", help="listen address (default UPSCALER_HOST, 127.0.0.1)")
    parser.add_argument("--port", type=int, help="listen port (default UPSCALER_PORT, 8000)")
    parser.add_argument("--workers", type=int, default=1, help="API processes (not with --dev)")
    parser.add_argument("--log-level", default=os.environ.get("UPSCALER_LOG_LEVEL", "info").lower())
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.dev:
        return run_dev(host=args.host, port=args.port, log_level=args.log_level)
    try:
        settings = load_settings()
        host, port = args.host or settings.host, args.port if args.port is not None else settings.port
        settings.check_deployable(bind_host=host)
    except (SettingsError, UnsafeSettings) as exc:
        print(f"api: {exc}", file=sys.stderr)
        return 2
    options = {"factory": True, "host": host, "port": port, "proxy_headers": True,
               **server_options(settings, args.log_level)}
    if args.workers > 1:
        return serve_processes(APP, workers=args.workers, **options)  # a socket per process (api/serving.py)
    uvicorn.run(APP, loop=LOOP, **options)
    return 0


def server_options(settings: Settings, log_level: str) -> dict:
    """uvicorn's settings from ours: the HTTP protocol with the client deadline, the proxies believed, and a
    logging configuration that shows our own loggers' lines beside uvicorn's, at the same level."""
    log_config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    for package in ("api", "jobs"):
        log_config["loggers"][package] = {"handlers": ["default"], "level": log_level.upper(), "propagate": False}
    return {"http": http_protocol(settings.client_timeout_seconds), "forwarded_allow_ips": settings.forwarded_allow_ips,
            "log_level": log_level, "log_config": log_config}


# --- `--dev`: Redis (REDIS_URL when set, else a private redis-server in a temporary directory), one
# `python -m worker` consuming every queue, and the API under uvicorn; Ctrl-C or SIGTERM stops all three.

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
        config = uvicorn.Config(create_app(settings), host=host, port=port, loop=LOOP,
                                **server_options(settings, log_level))
        server = uvicorn.Server(config)
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


if __name__ == "__main__":
    sys.exit(main())

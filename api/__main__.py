"""`python -m api`: the HTTP API. `python -m api --dev`: Redis, one worker and the API on this machine.

  python -m api                         # UPSCALER_HOST:UPSCALER_PORT (default 127.0.0.1:8000)
  python -m api --workers 4             # four API processes behind one port
  python -m api --dev                   # the whole stack; an embedded Redis when REDIS_URL is unset
"""
from __future__ import annotations

import argparse
import os
import sys

import uvicorn

from worker.settings import SettingsError, UnsafeSettings, load_settings


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
        from api.devstack import run_dev  # noqa: PLC0415 - only the dev command needs the launcher
        return run_dev(host=args.host, port=args.port, log_level=args.log_level)
    try:
        settings = load_settings()
        host, port = args.host or settings.host, args.port if args.port is not None else settings.port
        settings.check_deployable(bind_host=host)
    except (SettingsError, UnsafeSettings) as exc:
        print(f"api: {exc}", file=sys.stderr)
        return 2
    uvicorn.run("api.main:app_from_env", factory=True, host=host, port=port, workers=args.workers,
                log_level=args.log_level, proxy_headers=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

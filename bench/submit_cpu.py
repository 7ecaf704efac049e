"""CPU the API spends per submission: `python -m api` alone (a private redis-server, no worker), 50 concurrent
clients submitting a small PNG back to back; prints the API's CPU milliseconds per submission (from /proc,
threads included) and the latencies. With --profile the API runs under cProfile and the top functions print.

  python bench/submit_cpu.py                     # 50 clients x 20 submissions after a warm-up round
  python bench/submit_cpu.py --profile           # ... under cProfile (slower; read the shares, not the times)
  python bench/submit_cpu.py --tree /path/to/checkout   # the same against another checkout (an older commit)

No worker runs, so every job stays queued: the per-key limits are set never to refuse (their checks still run).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import pstats
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))

from api_load import Connection, cpu_seconds, multipart_body, percentile, run, small_png  # noqa: E402
from jobs.redis_server import RedisServer, free_port  # noqa: E402

BOUNDARY = "benchboundary7c1f"  # the one api_load.multipart_body uses


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--per-client", type=int, default=20)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--tree", type=Path, default=ROOT, help="the checkout whose API to run (default: this one)")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="submit-cpu-"))
    redis_server = RedisServer(workdir / "redis").start()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("UPSCALER_")}
    env.update(REDIS_URL=redis_server.url, PYTHONPATH=str(args.tree), UPSCALER_LOG_LEVEL="WARNING",
               UPSCALER_PORT=str(port), UPSCALER_RATE_LIMIT_PER_SECOND="1000000", UPSCALER_MAX_ACTIVE_JOBS_PER_KEY="0")
    profile = workdir / "api.prof"
    command = [sys.executable, *(["-m", "cProfile", "-o", str(profile)] if args.profile else []),
               "-m", "api", "--log-level", "warning"]
    api = subprocess.Popen(command, cwd=args.tree, env=env)
    body = multipart_body(small_png(32, 32), {"method": "bicubic", "scale": "2"})
    latencies: list[float] = []

    async def client(count: int) -> None:
        connection = Connection("127.0.0.1", port)
        try:
            for _ in range(count):
                started = time.perf_counter()
                status, payload = await connection.request("POST", "/v1/jobs", body,
                                                           f"multipart/form-data; boundary={BOUNDARY}")
                latencies.append(time.perf_counter() - started)
                if status != 202:
                    raise SystemExit(f"submit answered {status}: {payload[:200]!r}")
        finally:
            connection.close()

    async def round_of(count: int) -> float:
        started = time.perf_counter()
        await asyncio.gather(*(client(count) for _ in range(args.clients)))
        return time.perf_counter() - started

    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                run(Connection("127.0.0.1", port).request("GET", "/healthz"))
                break
            except OSError:
                if api.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("the API did not start")
                time.sleep(0.2)
        run(round_of(2))  # warm-up: connections, threads, caches
        latencies.clear()
        before = cpu_seconds([api.pid])
        wall = run(round_of(args.per_client))
        used = cpu_seconds([api.pid]) - before
        print(json.dumps({
            "tree": str(args.tree), "clients": args.clients, "submits": len(latencies), "profiled": args.profile,
            "api_cpu_ms_per_submit": round(used / len(latencies) * 1000, 2),
            "submits_per_second": round(len(latencies) / wall),
            "submit_ms_p50": round(percentile(latencies, 0.5) * 1000, 1),
            "submit_ms_p99": round(percentile(latencies, 0.99) * 1000, 1),
            "loadavg_1min": round(os.getloadavg()[0], 2)}, indent=2))
    finally:
        api.send_signal(signal.SIGINT)
        api.wait(timeout=30)
        redis_server.stop()
    if args.profile:
        pstats.Stats(str(profile)).sort_stats("tottime").print_stats(25)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Where images live (jobs/blobs.py): Redis memory per finished job, and how fast the API hands a large result out.

  python bench/storage.py                                  # both stores, 200 jobs, a 4096x4096 result
  python bench/storage.py --storage s3 --jobs 200 --fetches 5 --redirects 200

For each store (Redis, then S3 on a private SeaweedFS, tests/s3_server.py) a private stack is started: Redis, one
light worker and `python -m api` on this machine.

1. Memory: INFO used_memory of Redis after one warm-up job, then after `--jobs` finished jobs (bicubic x2 of a
   512x512 photo, scikit-image's astronaut, submitted by 8 clients at once); the difference per job.
2. Fetch: one job whose result is a 4096x4096 PNG (the astronaut upscaled to 2048x2048, then x2 by the job); the API
   streams it `--fetches` times over HTTP (MB/s, median and worst), and with S3, a second API process with
   UPSCALER_RESULT_REDIRECT=true answers `--redirects` GETs of it with 307 (latency p50/p99), whose presigned URL is
   then fetched from SeaweedFS directly (MB/s).
"""
from __future__ import annotations

import argparse
import asyncio
import io
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
import redis
import skimage.data
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from api_load import ROOT, percentile, private_stack, start_s3, stop_services, wait_ready  # noqa: E402

from jobs.redis_server import free_port  # noqa: E402


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


async def run_jobs(base: str, image: bytes, count: int, clients: int = 8) -> list[str]:
    """Submit `count` bicubic x2 jobs and wait until every one succeeded; their ids."""
    done: list[str] = []
    queue: asyncio.Queue = asyncio.Queue()
    for i in range(count):
        queue.put_nowait(i)

    async def client(http: httpx.AsyncClient) -> None:
        while not queue.empty():
            queue.get_nowait()
            answer = await http.post(f"{base}/v1/jobs", files={"image": ("a.png", image, "image/png")},
                                     data={"method": "bicubic", "scale": "2"})
            assert answer.status_code == 202, answer.text
            job_id = answer.json()["id"]
            while (status := (await http.get(f"{base}/v1/jobs/{job_id}")).json()["status"]) in ("queued", "running"):
                await asyncio.sleep(0.05)
            assert status == "succeeded", status
            done.append(job_id)

    async with httpx.AsyncClient(timeout=120) as http:
        await asyncio.gather(*(client(http) for _ in range(clients)))
    return done


def used_memory(url: str) -> int:
    client = redis.Redis.from_url(url)
    try:
        return int(client.info("memory")["used_memory"])
    finally:
        client.close()


def fetch_rates(url: str, rounds: int) -> list[float]:
    rates = []
    with httpx.Client(timeout=120) as http:
        for _ in range(rounds):
            started, size = time.perf_counter(), 0
            with http.stream("GET", url) as answer:
                assert answer.status_code == 200, answer.status_code
                for chunk in answer.iter_raw(1024 * 1024):
                    size += len(chunk)
            rates.append(size / (time.perf_counter() - started) / 1e6)
    return rates


def start_api(env: dict[str, str], port: int, logs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "api", "--port", str(port), "--log-level", "warning"], cwd=ROOT,
                            env=env, stdout=logs, stderr=subprocess.STDOUT)


def measure(storage: str, args) -> dict:
    workdir, redis_server, port, env = private_stack(f"storage-{storage}-")
    s3 = start_s3(workdir, env) if storage == "s3" else None
    env.update(UPSCALER_LOG_LEVEL="WARNING", UPSCALER_RATE_LIMIT_PER_SECOND="0", UPSCALER_MAX_ACTIVE_JOBS_PER_KEY="0")
    logs = open(workdir / "services.log", "wb")
    worker = subprocess.Popen([sys.executable, "-m", "worker", "--queues", "light", "--concurrency", "2"], cwd=ROOT,
                              env=env, stdout=logs, stderr=subprocess.STDOUT)
    processes = [worker, start_api(env, port, logs)]
    base = f"http://127.0.0.1:{port}"
    report: dict = {"storage": storage}
    try:
        wait_ready(port, processes)
        photo = Image.fromarray(skimage.data.astronaut())  # 512x512
        small = png(photo)
        asyncio.run(run_jobs(base, small, 1))
        before = used_memory(redis_server.url)
        asyncio.run(run_jobs(base, small, args.jobs))
        after = used_memory(redis_server.url)
        report["redis_bytes_per_finished_job"] = round((after - before) / args.jobs)
        report["input_png_bytes"] = len(small)

        large = png(photo.resize((2048, 2048), Image.BICUBIC))
        (job_id,) = asyncio.run(run_jobs(base, large, 1, clients=1))
        result_url = f"{base}/v1/jobs/{job_id}/result"
        rates = fetch_rates(result_url, args.fetches)
        output = httpx.get(f"{base}/v1/jobs/{job_id}").json()["output"]
        report["result_png"] = f"{output['width']}x{output['height']}, {output['bytes'] / 1e6:.1f} MB"
        report["api_stream_mb_per_s_median"] = round(statistics.median(rates))
        report["api_stream_mb_per_s_worst"] = round(min(rates))
        report["api_stream_rounds"] = len(rates)
        if s3 is not None:
            redirect_port = free_port()
            processes.append(start_api({**env, "UPSCALER_RESULT_REDIRECT": "true"}, redirect_port, logs))
            wait_ready(redirect_port, processes[-1:])
            latencies = []
            with httpx.Client(timeout=30) as http:
                redirect_url = f"http://127.0.0.1:{redirect_port}/v1/jobs/{job_id}/result"
                http.get(redirect_url)  # the connection and the signing key
                for _ in range(args.redirects):
                    started = time.perf_counter()
                    answer = http.get(redirect_url)
                    latencies.append(time.perf_counter() - started)
                    assert answer.status_code == 307, answer.status_code
                location = answer.headers["location"]
            report["redirect_ms_p50"] = round(statistics.median(latencies) * 1000, 2)
            report["redirect_ms_p99"] = round(percentile(latencies, 0.99) * 1000, 2)
            direct = fetch_rates(location, args.fetches)
            report["presigned_direct_mb_per_s_median"] = round(statistics.median(direct))
    finally:
        stop_services(processes, redis_server)
        if s3 is not None:
            s3.stop()
        logs.close()
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--storage", choices=("redis", "s3", "both"), default="both")
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--fetches", type=int, default=5)
    parser.add_argument("--redirects", type=int, default=200)
    args = parser.parse_args()
    for storage in (("redis", "s3") if args.storage == "both" else (args.storage,)):
        print(json.dumps(measure(storage, args)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

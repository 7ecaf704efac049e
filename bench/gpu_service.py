"""ZSSR jobs through the whole service on this machine's device: Redis, `python -m worker`, `python -m api`.

  python bench/gpu_service.py                          # the device the worker finds (CUDA when available)
  python bench/gpu_service.py --presets fast --rounds 1 --device cpu --steps 20

Starts a private Redis, one worker (both queues) and the API, and times how long the worker takes to be ready
(until /readyz counts a live worker on each queue: its imports and, on CUDA, `sr.warm_up`, whose seconds
it logs). Then, one job at a time, submits scikit-image's
astronaut (512x512 PNG, x2) with each preset in turn, polls it every 0.1 s until it is finished, fetches the
PNG and checks its size; per job: seconds from submit to succeeded as a client sees them, the job's own queue
and run seconds and training steps (its `metrics`), and the device it ran on. `--rounds` repeats the presets.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
from PIL import Image
from skimage import data  # a dev extra: the photo

ROOT = Path(__file__).resolve().parents[1]

from api_load import private_stack, stop_services  # noqa: E402  (bench/, this script's own folder)

WARM_UP_LOG = re.compile(r"warmed up the device in ([0-9.]+) s \(([^)]*)\)")


def astronaut_png() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(data.astronaut()).save(buffer, "PNG")
    return buffer.getvalue()


def wait_until_ready(client: httpx.Client, processes: list[subprocess.Popen], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in processes):
            raise SystemExit("a service process exited during start-up")
        try:
            answer = client.get("/readyz")
            # ready once a gpu-queue worker is live: it sends its first heartbeat after its warm-up
            if answer.status_code == 200 and all(answer.json()["queues"].values()):
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise SystemExit("the service did not become ready")


def run_job(client: httpx.Client, photo: bytes, preset: str) -> dict:
    started = time.monotonic()
    answer = client.post("/v1/jobs", files={"image": ("astronaut.png", photo, "image/png")},
                         data={"method": "zssr", "preset": preset, "scale": "2", "seed": "0"})
    answer.raise_for_status()
    job = answer.json()
    while job["status"] not in ("succeeded", "failed", "canceled"):
        time.sleep(0.1)
        job = client.get(f"/v1/jobs/{job['id']}").json()
    finished = time.monotonic() - started
    if job["status"] != "succeeded":
        raise SystemExit(f"job {job['id']} ({preset}) ended {job['status']}: {job['error']}")
    result = client.get(f"/v1/jobs/{job['id']}/result")
    with Image.open(io.BytesIO(result.content)) as image:
        size = image.size
    metrics = job["metrics"]
    row = {"preset": preset, "submit_to_succeeded_seconds": round(finished, 2),
           "queue_seconds": metrics["queue_seconds"], "run_seconds": metrics["run_seconds"],
           "train_steps": metrics["train_steps"], "device": metrics["device"], "output": list(size),
           "right_size": size == (1024, 1024)}
    print(f"  {preset}: {finished:.2f} s submit to succeeded (run {metrics['run_seconds']} s, "
          f"{metrics['train_steps']} steps on {metrics['device']})", flush=True)
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", default="paper,balanced,fast")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--device", default="", help="UPSCALER_DEVICE for the worker (default: CUDA when available)")
    parser.add_argument("--steps", type=int, default=0,
                        help="cap every preset's max_iters (0 = the presets as they are)")
    parser.add_argument("--json", type=Path, help="also write every figure here")
    args = parser.parse_args()

    workdir, redis_server, port, env = private_stack("gpu-service-")
    env.update(UPSCALER_LOG_LEVEL="INFO", UPSCALER_RATE_LIMIT_PER_SECOND="0", UPSCALER_DEVICE=args.device)
    if args.steps:
        env["UPSCALER_ZSSR_OVERRIDES"] = json.dumps({"max_iters": args.steps})
    log_path = workdir / "services.log"
    logs = open(log_path, "wb")
    started = time.monotonic()
    worker = subprocess.Popen([sys.executable, "-m", "worker"], cwd=ROOT, env=env, stdout=logs,
                              stderr=subprocess.STDOUT)
    api = subprocess.Popen([sys.executable, "-m", "api", "--port", str(port), "--log-level", "warning"], cwd=ROOT,
                           env=env, stdout=logs, stderr=subprocess.STDOUT)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            wait_until_ready(client, [worker, api], timeout=600)
            ready = time.monotonic() - started
            warm_up = WARM_UP_LOG.search(log_path.read_text(errors="replace"))
            print(f"service ready {ready:.1f} s after start; worker warm-up: "
                  f"{f'{warm_up.group(1)} s ({warm_up.group(2)})' if warm_up else 'none (not on CUDA)'}", flush=True)
            photo = astronaut_png()
            rows = [run_job(client, photo, preset) for _ in range(args.rounds) for preset in args.presets.split(",")]
    except SystemExit:
        print("the services' log ends:\n" + "\n".join(log_path.read_text(errors="replace").splitlines()[-20:]),
              file=sys.stderr)
        raise
    finally:
        stop_services([api, worker], redis_server, timeout=60)
        logs.close()
    print("\n| round | preset | device | training steps | submit to succeeded (s) | queue (s) | run (s) | 1024x1024 |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    per_round = len(args.presets.split(","))
    for i, r in enumerate(rows):
        print(f"| {i // per_round + 1} | {r['preset']} | {r['device']} | {r['train_steps']} | "
              f"{r['submit_to_succeeded_seconds']:.2f} | {r['queue_seconds']} | {r['run_seconds']} | "
              f"{'yes' if r['right_size'] else 'NO'} |")
    if args.json:
        args.json.write_text(json.dumps({"ready_seconds": ready, "warm_up_log": warm_up.group(0) if warm_up else None,
                                         "jobs": rows}, indent=2))
    return 0 if all(r["right_size"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

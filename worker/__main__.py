"""`python -m worker`: start the workers for the queues this host serves.

  python -m worker                       # every queue: one GPU-queue worker and one light-queue worker
  python -m worker --queues gpu          # a GPU host: one solo process per GPU (--gpus 0,1,...)
  python -m worker --queues light -c 8   # a CPU host: bicubic jobs and webhook deliveries, 8 threads

The `gpu` queue is served by a solo pool (one process, one job at a time, no fork, so CUDA is never
initialised in a parent that forks; with UPSCALER_PACK_JOBS=K > 1, K threads of that one process); `light` by
a thread pool, so a bicubic job or a webhook never waits behind ZSSR training. With more than one process to
run, this process supervises them: SIGTERM/SIGINT is passed on, and if one exits the others are stopped, so an
orchestrator sees the failure and restarts.
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import subprocess
import sys
import time

from jobs.queue import QUEUES
from jobs.settings import Settings, SettingsError, UnsafeSettings, load_settings
from jobs.store import JobStore
from worker.exits import EXIT_DEVICE_FAILED, EXIT_STUCK_RUN

HEALTHY_WITHIN_SECONDS = 20


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m worker", description=__doc__.split("\n\n")[0])
    parser.add_argument("--queues", default=",".join(QUEUES),
                        help=f"comma-separated queues to consume (default: all of {','.join(QUEUES)})")
    parser.add_argument("-c", "--concurrency", type=int, default=None,
                        help="threads of the light-queue worker (default UPSCALER_LIGHT_CONCURRENCY)")
    parser.add_argument("--gpus", default="",
                        help="'all' or comma-separated GPU indices: one gpu-queue process per GPU, each seeing only "
                             "its own (default: one process, device from UPSCALER_DEVICE)")
    parser.add_argument("--loglevel", default=os.environ.get("UPSCALER_LOG_LEVEL", "INFO"))
    parser.add_argument("--healthcheck", action="store_true",
                        help="exit 0 if a worker on this host sent a heartbeat recently (for container healthchecks)")
    args = parser.parse_args(argv)
    args.queues = [q.strip() for q in args.queues.split(",") if q.strip()]
    unknown = [q for q in args.queues if q not in QUEUES]
    if unknown or not args.queues:
        parser.error(f"unknown queue(s) {unknown}; choose from {', '.join(QUEUES)}")
    args.gpus = visible_gpus() if args.gpus.strip() == "all" else [g.strip() for g in args.gpus.split(",") if g.strip()]
    return args


def visible_gpus() -> list[str]:
    """Indices of this host's GPUs, from nvidia-smi: asking CUDA here would initialise it in the supervisor."""
    try:
        listing = subprocess.run(["nvidia-smi", "--list-gpus"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        raise SystemExit("worker: --gpus all needs nvidia-smi; pass the indices instead (--gpus 0,1)") from None
    return [str(i) for i, line in enumerate(listing.splitlines()) if line.startswith("GPU ")]


def celery_argv(queue: str, *, concurrency: int, loglevel: str, pack_jobs: int = 1) -> list[str]:
    """The Celery worker command line for one queue (see the module docstring for why these pools).

    With `pack_jobs` K > 1 the gpu queue runs K task threads instead of the solo pool: up to K jobs in flight,
    each acked, reported and canceled by its own thread, trained together by one packer thread (worker/packing.py)."""
    if queue == "gpu":
        pool = ["--pool", "solo"] if pack_jobs == 1 else ["--pool", "threads", "--concurrency", str(pack_jobs)]
    else:
        pool = ["--pool", "threads", "--concurrency", str(concurrency)]
    return ["worker", "--queues", queue, *pool, "--hostname", f"{queue}-{os.getpid()}@{socket.gethostname()}",
            "--loglevel", loglevel, "--prefetch-multiplier", "1",
            # Gossip, mingle and Celery's own heartbeats are broadcast chatter this service does not use.
            "--without-gossip", "--without-mingle", "--without-heartbeat"]


def child_commands(args: argparse.Namespace) -> list[tuple[list[str], dict[str, str]]]:
    """One `python -m worker --queues Q` per process to supervise, with its environment."""
    base = [sys.executable, "-m", "worker", "--loglevel", args.loglevel]
    commands = []
    if "gpu" in args.queues:
        for gpu in args.gpus or [None]:
            env = dict(os.environ, **({"CUDA_VISIBLE_DEVICES": gpu} if gpu is not None else {}))
            commands.append((base + ["--queues", "gpu"], env))
    if "light" in args.queues:
        extra = ["--concurrency", str(args.concurrency)] if args.concurrency else []
        commands.append((base + ["--queues", "light", *extra], dict(os.environ)))
    return commands


def supervise(commands: list[tuple[list[str], dict[str, str]]]) -> int:
    children = [subprocess.Popen(command, env=env) for command, env in commands]
    stopping = False

    def pass_on(signum, _frame):
        nonlocal stopping
        stopping = True
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    signal.signal(signal.SIGTERM, pass_on)
    signal.signal(signal.SIGINT, pass_on)
    while True:
        for i, child in enumerate(children):
            # A child whose watchdog ended a stuck run exits to be restarted: restart it here.
            if child.poll() == EXIT_STUCK_RUN and not stopping:
                logging.getLogger(__name__).warning("worker %d ended a stuck run; restarting it", child.pid)
                children[i] = subprocess.Popen(*commands[i][:1], env=commands[i][1])
        if not all(child.poll() is None for child in children):
            break
        time.sleep(0.5)
    for child in children:  # one ended: stop the rest so the whole worker is restarted as one
        if child.poll() is None:
            child.terminate()
    deadline = time.monotonic() + 60
    for child in children:
        try:
            child.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
    return max((child.returncode or 0) for child in children)


def healthcheck(settings: Settings) -> int:
    store = JobStore(settings.redis_url)
    host = socket.gethostname()
    alive = [name for name, _ in store.live_workers(HEALTHY_WITHIN_SECONDS) if name.endswith("@" + host)]
    print(f"{len(alive)} live worker(s) on {host}")
    return 0 if alive else 1


def lower_priority(nice: int) -> None:
    """Run this process (and the workers it starts, which inherit it) at `nice` at least. On a host shared with
    the API, training and bicubic jobs then take the CPU the API leaves (bench/api_load.py with API, worker and
    Redis on 2 cores: bench/RESULTS.md). Only ever lowered: raising a priority needs privileges."""
    if os.getpriority(os.PRIO_PROCESS, 0) < nice:
        os.setpriority(os.PRIO_PROCESS, 0, nice)


def one_torch_thread() -> None:
    """Light jobs run side by side in the pool's threads, so each bicubic resize gets one torch thread: with
    torch's default (one per core) every resize wakes an OpenMP team of its own, the pool's threads x cores
    threads contending for the cores, each team spinning after its work."""
    import torch  # noqa: PLC0415 - only the light worker; the supervisor never loads torch

    torch.set_num_threads(1)


def warm_up(settings: Settings) -> bool:
    """A gpu-queue worker on CUDA runs one tiny job per preset before it takes any (worker/runs.py
    `warm_up_device`), so the process's CUDA start-up is not a user's wait. False if it cannot run one (the device,
    or the overrides): the worker then exits rather than fail every job it would take, and the queued jobs wait
    for a sound worker."""
    from worker.runs import warm_up_device  # noqa: PLC0415 - loads sr and torch: the gpu-queue process only

    try:
        seconds = warm_up_device(settings)
    except Exception as exc:
        reason = (str(exc).strip().splitlines() or [""])[0]  # CUDA's errors go on with lines of debugging advice
        # the device, or the UPSCALER_ZSSR_OVERRIDES the jobs would run with (not checked before): the reason says
        print(f"worker: a warm-up ZSSR job failed, so this worker takes none: {type(exc).__name__}: {reason}",
              file=sys.stderr)
        return False
    if seconds is not None:
        logging.getLogger(__name__).info("warmed up the device in %.1f s (%s)", sum(seconds.values()),
                                         ", ".join(f"{name} {s:.1f} s" for name, s in seconds.items()))
    return True


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.loglevel.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = load_settings()
        settings.check_deployable()
    except (UnsafeSettings, SettingsError) as exc:
        print(f"worker: {exc}", file=sys.stderr)
        return 2
    if args.healthcheck:
        return healthcheck(settings)
    lower_priority(settings.worker_nice)
    commands = child_commands(args)
    if len(commands) > 1:
        return supervise(commands)
    queue = args.queues[0]
    if args.gpus:
        os.environ["CUDA_VISIBLE_DEVICES"] = args.gpus[0]
    if queue == "light":
        one_torch_thread()
    elif not warm_up(settings):
        return EXIT_DEVICE_FAILED
    # Imported only now: building the Celery app reads the settings, which were just checked with a clean error.
    from worker.celery_app import app  # noqa: PLC0415
    app.worker_main(celery_argv(queue, concurrency=args.concurrency or settings.light_concurrency,
                                loglevel=args.loglevel, pack_jobs=settings.pack_jobs))
    return 0


if __name__ == "__main__":
    sys.exit(main())

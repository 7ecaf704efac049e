"""Load benchmark of the job backend: Redis, the API and one worker on this machine.

  python bench/api_load.py                      # 50 clients, 500 small bicubic jobs, then a 10 s poll phase
  python bench/api_load.py --clients 50 --jobs 500 --poll-seconds 10 --api-workers 1
  python bench/api_load.py --idempotency key      # an Idempotency-Key on every submission (its cost in the p99)
  python bench/api_load.py --idempotency twice    # ... and every submission sent twice: duplicate_jobs must be 0
  python bench/api_load.py --slow-clients 200     # and 200 connections that never finish their request
  python bench/api_load.py --storage s3           # images in a private SeaweedFS (tests/s3_server.py), not Redis
  python bench/api_load.py --storage s3 --probe   # and the stores' own latency under the load, from a side process
  python bench/api_load.py --storage s3 --s3-endpoint http://HOST:PORT --s3-bucket NAME
                                                  # an S3 server elsewhere (AWS_* credentials from the environment)

Phase 1 (load): each client submits a job, polls it back to back until it is finished, fetches the
result, and takes the next job, until all jobs are done. Phase 2 (polls): every client polls finished
jobs as fast as it can for a fixed time. Prints jobs lost (accepted with 202 but not succeeded, or with a
result of the wrong size), submit latency p50/p99, polls per second in both phases, and the CPU seconds
each process used, since the machine is shared. The HTTP client is a small keep-alive client on asyncio
streams, so that the client's own overhead does not hide the server's. With --probe, a process of its own times a
Redis PING and (with S3 storage) a put of an object the size of the input every 50 ms during the load phase (from
about half a second after it starts): how long the stores themselves take to answer under this load, a floor
under a submission's latency.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from PIL import Image

try:
    import uvloop
except ImportError:  # pragma: no cover - the API's dependencies include it on Linux
    uvloop = None

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from jobs.redis_server import RedisServer, free_port  # noqa: E402

BOUNDARY = "benchboundary7c1f"


class Connection:
    """One keep-alive HTTP/1.1 connection (requests one at a time, answers with Content-Length)."""

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.reader = self.writer = None

    async def request(self, method: str, path: str, body: bytes = b"", content_type: str = "",
                      extra_headers: str = "") -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        head = f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Length: {len(body)}\r\n{extra_headers}"
        if content_type:
            head += f"Content-Type: {content_type}\r\n"
        self.writer.write(head.encode() + b"\r\n" + body)
        status_line, *header_lines = (await self.reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        length, close = 0, False
        for line in header_lines:
            name, _, value = line.partition(":")
            if name.lower() == "content-length":
                length = int(value)
            elif name.lower() == "connection" and "close" in value.lower():
                close = True
        payload = await self.reader.readexactly(length)
        if close:
            self.writer.close()
            self.reader = self.writer = None
        return int(status_line.split()[1]), payload

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def multipart_body(image: bytes, fields: dict[str, str]) -> bytes:
    parts = [f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
             for k, v in fields.items()]
    parts.append(f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="image"; filename="in.png"\r\n'
                 f"Content-Type: image/png\r\n\r\n".encode() + image + b"\r\n")
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


def small_png(width: int, height: int) -> bytes:
    image = Image.effect_noise((width, height), 40).convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


class Tally:
    def __init__(self):
        self.submit_seconds: list[float] = []
        self.later_submit_seconds: list[float] = []  # each client's submissions after its first
        self.polls = 0
        self.accepted: list[str] = []
        self.succeeded: set[str] = set()
        self.wrong: list[str] = []
        self.statuses: dict[int, int] = {}
        self.duplicate_jobs = 0  # --send-twice: second sends of one Idempotency-Key that made another job

    def count(self, status: int) -> None:
        self.statuses[status] = self.statuses.get(status, 0) + 1


async def load_client(host: str, port: int, body: bytes, expected: tuple[int, int], jobs: asyncio.Queue,
                      tally: Tally, poll_interval: float, idempotency: str = "") -> None:
    """`idempotency`: '' (no key), 'key' (a new Idempotency-Key on each submission) or 'twice' (each submission
    sent a second time with its key, as a client retrying after a lost answer would)."""
    connection = Connection(host, port)
    first = True
    try:
        while True:
            try:
                jobs.get_nowait()
            except asyncio.QueueEmpty:
                return
            key_header = f"Idempotency-Key: {uuid.uuid4().hex}\r\n" if idempotency else ""
            content_type = f"multipart/form-data; boundary={BOUNDARY}"
            started = time.perf_counter()
            status, payload = await connection.request("POST", "/v1/jobs", body, content_type, key_header)
            tally.submit_seconds.append(time.perf_counter() - started)
            if idempotency == "twice" and status == 202:
                again, replayed = await connection.request("POST", "/v1/jobs", body, content_type, key_header)
                tally.count(again)
                if again != 202 or json.loads(replayed)["id"] != json.loads(payload)["id"]:
                    tally.duplicate_jobs += 1
            if not first:
                tally.later_submit_seconds.append(tally.submit_seconds[-1])
            first = False
            tally.count(status)
            if status != 202:
                continue
            job_id = json.loads(payload)["id"]
            tally.accepted.append(job_id)
            while True:
                status, payload = await connection.request("GET", f"/v1/jobs/{job_id}")
                tally.polls += 1
                tally.count(status)
                job = json.loads(payload)
                if job.get("status") in ("succeeded", "failed", "canceled"):
                    break
                if poll_interval:
                    await asyncio.sleep(poll_interval)
            if job["status"] != "succeeded":
                continue
            status, payload = await connection.request("GET", f"/v1/jobs/{job_id}/result")
            with Image.open(io.BytesIO(payload)) as result:
                if status == 200 and result.size == expected:
                    tally.succeeded.add(job_id)
                else:
                    tally.wrong.append(job_id)
    finally:
        connection.close()


async def poll_client(host: str, port: int, job_ids: list[str], until: float, tally: Tally, offset: int) -> None:
    connection = Connection(host, port)
    try:
        i = offset
        while time.perf_counter() < until:
            status, _ = await connection.request("GET", f"/v1/jobs/{job_ids[i % len(job_ids)]}")
            tally.polls += 1
            tally.count(status)
            i += 1
    finally:
        connection.close()


async def slow_client(host: str, port: int, kind: str, cap: float, closes: list[tuple[float, bool]],
                      connected: asyncio.Queue) -> None:
    """A connection that never finishes its request: "headers" sends them a byte a second, "body" sends them whole
    and then a body that stops after its first bytes. Puts None in `connected` once connected; records when the
    server closed it (seconds after it opened) and whether it answered 408; nothing if it was still open after
    `cap` seconds."""
    reader, writer = await asyncio.open_connection(host, port)
    opened = time.perf_counter()
    connected.put_nowait(None)
    if kind == "body":
        writer.write(f"POST /v1/jobs HTTP/1.1\r\nHost: {host}\r\nContent-Length: 100000\r\n"
                     f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n\r\n--{BOUNDARY}\r\n".encode())
        trickle = b""
    else:
        trickle = f"POST /v1/jobs HTTP/1.1\r\nHost: {host}\r\nX-Slow: {'a' * 1000}".encode()
    answer = b""
    try:
        while time.perf_counter() - opened < cap:
            if trickle:
                writer.write(trickle[:1])
                trickle = trickle[1:]
            try:
                chunk = await asyncio.wait_for(reader.read(4096), 1.0)
            except asyncio.TimeoutError:
                continue
            if not chunk:
                closes.append((time.perf_counter() - opened, answer.startswith(b"HTTP/1.1 408")))
                return
            answer += chunk
    except OSError:
        closes.append((time.perf_counter() - opened, answer.startswith(b"HTTP/1.1 408")))
    finally:
        writer.close()


def store_probe(env: dict[str, str], payload: bytes, interval: float, stop, answer) -> None:
    """Time a Redis PING and, with S3 storage, a put of `payload` every `interval` seconds until `stop` is set; send
    {"redis_ping": [ms...], "s3_put": [ms...]} to `answer`. Runs in a process of its own, so that neither the bench
    client's event loop nor its GIL is in the figures; the probe's objects are deleted at the end."""
    import redis  # noqa: PLC0415

    from jobs.blobs import open_blob_store  # noqa: PLC0415

    os.environ.update(env)  # the AWS_* credentials obstore reads
    client = redis.Redis.from_url(env["REDIS_URL"])
    blobs = open_blob_store(env.get("UPSCALER_STORAGE_URL"), s3_endpoint_url=env.get("UPSCALER_S3_ENDPOINT_URL"))
    times: dict[str, list[float]] = {"redis_ping": [], "s3_put": []}
    keys = []
    while not stop.is_set():
        started = time.perf_counter()
        client.ping()
        times["redis_ping"].append((time.perf_counter() - started) * 1000)
        if blobs is not None:
            keys.append(f"probe/{len(keys)}")
            started = time.perf_counter()
            blobs.put(keys[-1], payload)
            times["s3_put"].append((time.perf_counter() - started) * 1000)
        stop.wait(interval)
    if blobs is not None:
        blobs.delete(keys)
    answer.send(times)


class StoreProbe:
    """store_probe in a spawned process, for the duration of a `with` block."""

    def __init__(self, env: dict[str, str], payload: bytes, interval: float = 0.05):
        context = multiprocessing.get_context("spawn")
        self.stop, (self.receiver, sender) = context.Event(), context.Pipe(duplex=False)
        self.process = context.Process(target=store_probe, args=(env, payload, interval, self.stop, sender))
        self.times: dict[str, list[float]] = {}

    def __enter__(self) -> StoreProbe:
        self.process.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.times = self.receiver.recv() if self.receiver.poll(30) else {}
        self.process.join(timeout=10)

    def report(self) -> dict[str, float]:
        return {f"probe_{name}_ms_{label}": round(percentile(values, q), 2)
                for name, values in self.times.items() if values for label, q in (("p50", 0.5), ("p99", 0.99))}


def cpu_seconds(pids: list[int], *, descendants: bool = True) -> float:
    """User + system CPU seconds of these processes, and of their descendants unless told not to (from /proc)."""
    ticks, seen, frontier = 0, set(), list(pids)
    while frontier:
        pid = frontier.pop()
        if pid in seen:
            continue
        seen.add(pid)
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])
            if descendants:
                frontier += [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
        except OSError:
            continue
    return ticks / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def run(coroutine):
    """uvloop when installed (it is a dependency of the API): the client's own overhead matters here."""
    return uvloop.run(coroutine) if uvloop is not None else asyncio.run(coroutine)


def wait_ready(port: int, processes: list[subprocess.Popen], timeout: float = 60) -> None:
    async def probe() -> int:
        connection = Connection("127.0.0.1", port)
        try:
            return (await connection.request("GET", "/readyz"))[0]
        finally:
            connection.close()

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in processes):
            raise SystemExit("a service process exited during start-up")
        try:
            if run(probe()) == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit("the stack did not become ready")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--size", type=int, default=32, help="side of the square input image")
    parser.add_argument("--poll-seconds", type=float, default=10.0)
    parser.add_argument("--poll-interval", type=float, default=0.0,
                        help="pause between two polls of one job in the load phase (0: back to back)")
    parser.add_argument("--api-workers", type=int, default=1, help="API processes (uvicorn workers)")
    parser.add_argument("--idempotency", choices=["", "key", "twice"], default="",
                        help="key: an Idempotency-Key on every submission; twice: and each sent twice (0 duplicates)")
    parser.add_argument("--light-concurrency", type=int, default=4)
    parser.add_argument("--worker-nice", type=int, help="UPSCALER_WORKER_NICE for the worker (default: its default)")
    parser.add_argument("--slow-clients", type=int, default=0,
                        help="connections that never finish their request, opened as the load phase starts (half "
                             "trickle their headers, half stall their body); the run waits for the API to close them")
    parser.add_argument("--client-timeout", type=float,
                        help="UPSCALER_CLIENT_TIMEOUT_SECONDS for the API (default: its default)")
    parser.add_argument("--storage", choices=("redis", "s3"), default="redis",
                        help="where images live: Redis (the default) or a private SeaweedFS started here (S3)")
    parser.add_argument("--probe", action="store_true",
                        help="time a Redis PING and an S3 put (with --storage s3) every 50 ms during the load phase, "
                             "from a process of its own")
    parser.add_argument("--s3-endpoint", help="with --storage s3: this S3 server (e.g. on another host, with the "
                                              "AWS_* credentials of the environment) instead of a private SeaweedFS")
    parser.add_argument("--s3-bucket", default="bench", help="the bucket on --s3-endpoint (made if missing)")
    parser.add_argument("--cold-bucket", action="store_true",
                        help="with --storage s3: start on a bucket never written to (its first writes wait for "
                             "SeaweedFS to grow volumes)")
    args = parser.parse_args()

    workdir, redis_server, port, env = private_stack("api-load-")
    s3 = None
    if args.storage == "s3" and args.s3_endpoint:
        env.update(UPSCALER_STORAGE_URL=f"s3://{args.s3_bucket}", UPSCALER_S3_ENDPOINT_URL=args.s3_endpoint)
    elif args.storage == "s3":
        s3 = start_s3(workdir, env, warm=not args.cold_bucket)
    # Per-key limits stay on (their check is part of every request's cost) but set so that they never refuse
    # here: this measures throughput and latency, not 429s.
    env.update(UPSCALER_LOG_LEVEL="WARNING", UPSCALER_RATE_LIMIT_PER_SECOND="1000000",
               UPSCALER_MAX_ACTIVE_JOBS_PER_KEY="0")
    if args.worker_nice is not None:
        env["UPSCALER_WORKER_NICE"] = str(args.worker_nice)
    if args.client_timeout is not None:
        env["UPSCALER_CLIENT_TIMEOUT_SECONDS"] = str(args.client_timeout)
    logs = open(workdir / "services.log", "wb")
    worker = subprocess.Popen([sys.executable, "-m", "worker", "--concurrency", str(args.light_concurrency)],
                              cwd=ROOT, env=env, stdout=logs, stderr=subprocess.STDOUT)
    api = subprocess.Popen([sys.executable, "-m", "api", "--port", str(port), "--workers", str(args.api_workers),
                            "--log-level", "warning"], cwd=ROOT, env=env, stdout=logs, stderr=subprocess.STDOUT)
    try:
        wait_ready(port, [worker, api])
        worker_nice = os.getpriority(os.PRIO_PROCESS, worker.pid)  # UPSCALER_WORKER_NICE, set as it starts
        body = multipart_body(small_png(args.size, args.size), {"method": "bicubic", "scale": "2"})
        expected = (args.size * 2, args.size * 2)
        load, polls = Tally(), Tally()
        slow_closes: list[tuple[float, bool]] = []  # (seconds open, answered 408) of each slow client closed
        slow_cap = 120.0  # a slow client still open this long was never closed
        pids = {"api": [api.pid], "worker": [worker.pid], "redis": [redis_server.process.pid]}
        if s3 is not None:
            pids["s3"] = [s3.process.pid, s3.backend.pid]

        async def run_load() -> float:
            queue: asyncio.Queue = asyncio.Queue()
            for i in range(args.jobs):
                queue.put_nowait(i)
            connected: asyncio.Queue = asyncio.Queue()
            slow = [asyncio.create_task(slow_client("127.0.0.1", port, ("headers", "body")[i % 2], slow_cap,
                                                    slow_closes, connected)) for i in range(args.slow_clients)]
            for _ in slow:  # all connected before the load starts
                await connected.get()
            started = time.perf_counter()
            await asyncio.gather(*(load_client("127.0.0.1", port, body, expected, queue, load, args.poll_interval,
                                               args.idempotency) for _ in range(args.clients)))
            wall = time.perf_counter() - started
            await asyncio.gather(*slow)
            return wall

        async def run_polls() -> float:
            started = time.perf_counter()
            until = started + args.poll_seconds
            await asyncio.gather(*(poll_client("127.0.0.1", port, load.accepted, until, polls, i * 7)
                                   for i in range(args.clients)))
            return time.perf_counter() - started

        def usage() -> dict[str, float]:
            return {**{name: cpu_seconds(p) for name, p in pids.items()},
                    "bench client": cpu_seconds([os.getpid()], descendants=False)}

        cpu_before = usage()
        load_before = os.getloadavg()[0]
        probe = StoreProbe(env, small_png(args.size, args.size)) if args.probe else contextlib.nullcontext()
        with probe:
            load_wall = run(run_load())
        cpu_after_load = usage()
        cpu_load = {name: cpu_after_load[name] - cpu_before[name] for name in cpu_before}
        poll_wall = run(run_polls())
        cpu_after_polls = usage()
        cpu_polls = {name: cpu_after_polls[name] - cpu_after_load[name] for name in cpu_before}
        lost = len(load.accepted) - len(load.succeeded)
        report = {
            "clients": args.clients, "jobs": args.jobs, "poll_interval_s": args.poll_interval,
            "image": f"{args.size}x{args.size} PNG, bicubic x2",
            "accepted": len(load.accepted), "succeeded_with_right_result": len(load.succeeded), "jobs_lost": lost,
            "wrong_results": len(load.wrong), "load_phase_seconds": round(load_wall, 2),
            "idempotency": args.idempotency or "none", "duplicate_jobs": load.duplicate_jobs,
            "jobs_per_second": round(len(load.succeeded) / load_wall, 1),
            "submit_ms_p50": round(statistics.median(load.submit_seconds) * 1000, 1),
            "submit_ms_p99": round(percentile(load.submit_seconds, 0.99) * 1000, 1),
            "submit_ms_max": round(max(load.submit_seconds) * 1000, 1),
            # Each client's first submission opens its connection, all 50 at once.
            "submit_ms_p99_after_first_round": round(percentile(load.later_submit_seconds, 0.99) * 1000, 1),
            "polls_per_second_during_load": round(load.polls / load_wall, 1),
            "polls_per_second_poll_phase": round(polls.polls / poll_wall, 1),
            "http_statuses": {**{str(k): v for k, v in sorted(load.statuses.items())}},
            "poll_phase_statuses": {str(k): v for k, v in sorted(polls.statuses.items())},
            "cpu_seconds_load_phase": {k: round(v, 1) for k, v in cpu_load.items()},
            "cpu_seconds_poll_phase": {k: round(v, 1) for k, v in cpu_polls.items()},
            "loadavg_1min_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
            "cores": os.cpu_count(), "api_workers": args.api_workers, "worker_nice": worker_nice,
            "storage": args.storage,
        }
        if args.probe:
            report.update(probe.report())
        if args.s3_endpoint:
            report["s3_endpoint"] = args.s3_endpoint
        elif s3 is not None:
            report["s3_bucket"] = ("cold (never written before the run)" if args.cold_bucket
                                   else "warm (one object written and deleted first)")
        if args.slow_clients:
            seconds = [s for s, _ in slow_closes]
            report.update(slow_clients=args.slow_clients, slow_closed=len(slow_closes),
                          slow_answered_408=sum(answered for _, answered in slow_closes),
                          slow_closed_after_s_min=round(min(seconds, default=0), 2),
                          slow_closed_after_s_max=round(max(seconds, default=0), 2))
        print(json.dumps(report, indent=2))
        return 0 if lost == 0 and not load.wrong and not load.duplicate_jobs else 1
    finally:
        stop_services([api, worker], redis_server)
        if s3 is not None:
            s3.stop()
        logs.close()


def private_stack(prefix: str) -> tuple[Path, RedisServer, int, dict[str, str]]:
    """A new work folder, a private Redis started in it, a free port for the API, and the services' environment:
    that Redis, this checkout importable (ahead of any PYTHONPATH already set), no UPSCALER_* from the shell."""
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    redis_server = RedisServer(workdir / "redis").start()
    env = {k: v for k, v in os.environ.items() if not k.startswith("UPSCALER_")}
    env.update(REDIS_URL=redis_server.url,
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    return workdir, redis_server, free_port(), env


def start_s3(workdir: Path, env: dict[str, str], bucket: str = "bench", warm: bool = True):
    """A private SeaweedFS in `workdir` (the dev extras' `weed`), and `env` pointed at a bucket on it, written to once
    unless `warm` is false (a new bucket's first write waits for SeaweedFS to grow its volumes, about a second)."""
    from tests.s3_server import SeaweedS3  # noqa: PLC0415 - only with --storage s3

    server = SeaweedS3(workdir / "s3").start()
    if warm:
        server.warm_bucket(bucket)
    env.update(server.env(bucket))
    return server


def stop_services(processes: list[subprocess.Popen], redis_server: RedisServer, timeout: float = 30) -> None:
    """SIGTERM to each process (a worker hands back a running job), a kill for any still up after `timeout`
    seconds, then Redis."""
    for process in processes:
        process.terminate()
    for process in processes:
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
    redis_server.stop()


if __name__ == "__main__":
    sys.exit(main())

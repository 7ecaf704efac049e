"""Soak test: 100 clients submit 1,000 small jobs while a worker is killed (SIGKILL) and restarted every 20 s.

  python bench/soak.py                                  # the issue's run: 100 clients, 1,000 jobs, a kill every 20 s
  python bench/soak.py --clients 20 --jobs 100 --kill-every 10 --rate 5     # a short one

On this machine: a private redis-server (append-only file on, as in docker-compose.yml), two light-queue
workers (`python -m worker --queues light`, the production lease, reaper and re-send timings unless told
otherwise), and the API (`python -m api`, with API keys, per-key limits on, signed webhooks to a receiver in
this process). Each client takes the next job, submits it at its scheduled time (the jobs are spread over
`--jobs / --rate` seconds so the kills fall among them), polls it until it ends, fetches its result and
checks its size. Every `--kill-every` seconds one worker (in turn) is killed with SIGKILL and a new one
started. At the end every job is read again, its result fetched again and compared, and its webhooks counted.

Prints (JSON): jobs accepted, finished (by status), lost (accepted but never finished, or finished without a
result of the right size), duplicates visible to clients (a result that changed between two fetches, a job
with more than one terminal webhook event id, a status that changed after it was final, an id given twice),
5xx responses, 429s, submit latency p50/p99, time to finish, and for each kill the jobs the dead worker was
running and how long until they were back in the queue.
"""
from __future__ import annotations

import argparse
import asyncio
import hashlib
import io
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
from PIL import Image

try:
    import uvloop
except ImportError:  # pragma: no cover - a dependency of the API on Linux
    uvloop = None

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from jobs.redis_server import RedisServer, free_port  # noqa: E402
from jobs.store import JobStore  # noqa: E402

TERMINAL = ("succeeded", "failed", "canceled")
WEBHOOK_SECRET = "whsec_" + "c29hay1iZW5jaC13ZWJob29rLXNlY3JldC0wMDAwMA=="


@dataclass
class JobRecord:
    job_id: str
    client: int
    submitted_at: float
    finished_at: float | None = None
    status: str | None = None
    result_sha: str | None = None
    statuses_seen: list[str] = field(default_factory=list)


@dataclass
class Tally:
    submit_seconds: list[float] = field(default_factory=list)
    responses: Counter = field(default_factory=Counter)  # (route, status) -> count
    jobs: dict[str, JobRecord] = field(default_factory=dict)
    duplicate_ids: int = 0
    wrong_results: list[str] = field(default_factory=list)
    regressions: list[str] = field(default_factory=list)
    transport_errors: Counter = field(default_factory=Counter)


class Receiver:
    """Counts webhook events per job: (type, webhook-id) pairs."""

    def __init__(self):
        self.events: dict[str, set[tuple[str, str]]] = defaultdict(set)
        self.requests = 0
        lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))))
                with lock:
                    receiver.requests += 1
                    receiver.events[body["data"]["id"]].add((body["type"], self.headers["webhook-id"]))
                self.send_response(204)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def terminal(self, job_id: str) -> set[tuple[str, str]]:
        return {event for event in self.events.get(job_id, set()) if event[0] != "job.started"}


def small_png(size: int) -> bytes:
    buffer = io.BytesIO()
    Image.effect_noise((size, size), 40).convert("RGB").save(buffer, "PNG")
    return buffer.getvalue()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))] if ordered else float("nan")


@dataclass
class Reply:
    status_code: int
    headers: dict[str, str]
    content: bytes

    def json(self):
        return json.loads(self.content)


class Connection:
    """One keep-alive HTTP/1.1 connection, one request at a time (the API answers with Content-Length).

    Small and on asyncio streams (uvloop), so 100 clients cost this process little: a heavier client would
    measure its own queueing, not the service's."""

    IDLE_SECONDS = 4.0  # uvicorn closes a keep-alive connection idle for 5 s: open a new one before that

    def __init__(self, port: int, key: str):
        self.port, self.key = port, key
        self.reader = self.writer = None
        self.last_used = 0.0

    async def request(self, method: str, path: str, body: bytes = b"", content_type: str = "") -> Reply:
        if self.writer is not None and time.monotonic() - self.last_used > self.IDLE_SECONDS:
            self.close()
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        head = (f"{method} {path} HTTP/1.1\r\nHost: soak\r\nAuthorization: Bearer {self.key}\r\n"
                f"Content-Length: {len(body)}\r\n")
        if content_type:
            head += f"Content-Type: {content_type}\r\n"
        try:
            self.writer.write(head.encode() + b"\r\n" + body)
            status_line, *lines = (await self.reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
            headers = {}
            for line in lines:
                name, _, value = line.partition(":")
                if name:
                    headers[name.strip().lower()] = value.strip()
            content = await self.reader.readexactly(int(headers.get("content-length", "0")))
        except (OSError, asyncio.IncompleteReadError):
            self.close()
            raise
        self.last_used = time.monotonic()
        if "close" in headers.get("connection", "").lower():
            self.close()
        return Reply(int(status_line.split()[1]), headers, content)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


def multipart(image: bytes, fields: dict[str, str]) -> tuple[bytes, str]:
    boundary = "soak" + os.urandom(8).hex()
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
             for k, v in fields.items()]
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="in.png"\r\n'
                 f"Content-Type: image/png\r\n\r\n".encode() + image + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


async def request(connection: Connection, tally: Tally, route: str, method: str, path: str, body: bytes = b"",
                  content_type: str = "") -> Reply | None:
    """One request; transport errors (a connection reset) are counted and retried; 429s wait and retry."""
    for attempt in range(5):
        try:
            response = await connection.request(method, path, body, content_type)
            tally.responses[(route, response.status_code)] += 1
            if response.status_code == 429:
                await asyncio.sleep(float(response.headers.get("retry-after", "1")))
                continue
            return response
        except (OSError, asyncio.IncompleteReadError) as exc:
            tally.transport_errors[f"{route}: {type(exc).__name__}"] += 1
            await asyncio.sleep(0.5 * (attempt + 1))
    return None


async def client_loop(number: int, port: int, key: str, image: bytes, size: int, scale: int,
                      slots: asyncio.Queue, started: float, interval: float, webhook_url: str, tally: Tally,
                      poll_interval: float) -> None:
    connection = Connection(port, key)
    body, content_type = multipart(image, {"method": "bicubic", "scale": str(scale), "webhook_url": webhook_url})
    while True:
        try:
            slot = slots.get_nowait()
        except asyncio.QueueEmpty:
            connection.close()
            return
        await asyncio.sleep(max(0.0, started + slot * interval - time.monotonic()))
        began = time.perf_counter()
        response = await request(connection, tally, "submit", "POST", "/v1/jobs", body, content_type)
        tally.submit_seconds.append(time.perf_counter() - began)
        if response is None or response.status_code != 202:
            continue
        job_id = response.json()["id"]
        if job_id in tally.jobs:
            tally.duplicate_ids += 1
        record = tally.jobs[job_id] = JobRecord(job_id, number, time.monotonic())
        while True:
            await asyncio.sleep(poll_interval)
            polled = await request(connection, tally, "poll", "GET", f"/v1/jobs/{job_id}")
            if polled is None or polled.status_code != 200:
                continue
            status = polled.json()["status"]
            if record.statuses_seen and record.statuses_seen[-1] in TERMINAL and status != record.statuses_seen[-1]:
                tally.regressions.append(job_id)
            record.statuses_seen.append(status)
            if status in TERMINAL:
                record.status, record.finished_at = status, time.monotonic()
                break
        if record.status == "succeeded":
            result = await request(connection, tally, "result", "GET", f"/v1/jobs/{job_id}/result")
            if result is not None and result.status_code == 200:
                record.result_sha = hashlib.sha256(result.content).hexdigest()
                with Image.open(io.BytesIO(result.content)) as out:
                    if out.size != (size * scale, size * scale):
                        tally.wrong_results.append(job_id)


class Stack:
    """Redis, two workers and the API as child processes, with the worker kills."""

    def __init__(self, args: argparse.Namespace, workdir: Path, receiver_url: str):
        self.args, self.workdir = args, workdir
        self.redis = RedisServer(workdir / "redis", appendonly=True).start()
        self.port = free_port()
        self.keys = [f"soak-key-{i:02d}-" + os.urandom(12).hex() for i in range(args.keys)]
        env = {k: v for k, v in os.environ.items() if not k.startswith("UPSCALER_")}
        env.update(REDIS_URL=self.redis.url, PYTHONPATH=str(ROOT), UPSCALER_LOG_LEVEL="WARNING",
                   UPSCALER_API_KEYS=",".join(self.keys), UPSCALER_WEBHOOK_SECRET=WEBHOOK_SECRET,
                   UPSCALER_WEBHOOK_ALLOW_PRIVATE="true", UPSCALER_PORT=str(self.port))
        for name in ("lease_seconds", "reaper_interval_seconds", "redispatch_after_seconds"):
            value = getattr(args, name)
            if value is not None:
                env["UPSCALER_" + name.upper()] = str(value)
        self.env = env
        self.logs = open(workdir / "services.log", "ab")
        self.workers: list[subprocess.Popen] = [self.start_worker() for _ in range(2)]
        self.api = subprocess.Popen([sys.executable, "-m", "api", "--workers", str(args.api_workers),
                                     "--log-level", "warning"], cwd=ROOT, env=env, stdout=self.logs,
                                    stderr=subprocess.STDOUT)
        self.store = JobStore(self.redis.url)
        self.kills: list[dict] = []

    def start_worker(self) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "worker", "--queues", "light", "--concurrency",
                                 str(self.args.light_concurrency)], cwd=ROOT, env=self.env, stdout=self.logs,
                                stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/readyz", timeout=2).status_code == 200 \
                        and len(self.store.live_workers(20)) >= 2:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise SystemExit("the stack did not become ready; see " + str(self.workdir / "services.log"))

    def kill_one(self, turn: int) -> dict:
        """SIGKILL worker `turn % 2`, note what it was running, start a replacement at once."""
        index = turn % 2
        victim = self.workers[index]
        name_part = f"light-{victim.pid}@"
        running = [job_id for job_id in self.store.running_ids()
                   if name_part in ((self.store.fields(job_id) or {}).get("worker") or "")]
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        killed_at = time.monotonic()
        self.workers[index] = self.start_worker()
        kill = {"at_s": None, "pid": victim.pid, "running": running, "requeued_after_s": {}, "killed_at": killed_at,
                "name": name_part}
        self.kills.append(kill)
        return kill

    def watch_requeues(self) -> None:
        """For each kill: seconds until each job the dead worker was running left it (requeued or finished)."""
        for kill in self.kills:
            for job_id in kill["running"]:
                if job_id in kill["requeued_after_s"]:
                    continue
                fields = self.store.fields(job_id) or {}
                if kill["name"] not in (fields.get("worker") or "") or fields.get("status") != "running":
                    kill["requeued_after_s"][job_id] = round(time.monotonic() - kill["killed_at"], 1)

    def stop(self) -> None:
        for process in [self.api, *self.workers]:
            if process.poll() is None:
                process.terminate()
        for process in [self.api, *self.workers]:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
        self.store.close()
        self.redis.stop()
        self.logs.close()


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and its children (from /proc)."""
    total, frontier, seen = 0, [pid], set()
    while frontier:
        current = frontier.pop()
        if current in seen:
            continue
        seen.add(current)
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
            frontier += [int(c) for c in Path(f"/proc/{current}/task/{current}/children").read_text().split()]
        except OSError:
            continue
    return total / os.sysconf("SC_CLK_TCK")


async def soak(args: argparse.Namespace, stack: Stack, receiver: Receiver) -> dict:
    tally = Tally()
    image = small_png(args.size)
    slots: asyncio.Queue = asyncio.Queue()
    for i in range(args.jobs):
        slots.put_nowait(i)
    interval = 1.0 / args.rate
    started = time.monotonic()
    clients = [asyncio.create_task(client_loop(i, stack.port, stack.keys[i % len(stack.keys)], image, args.size,
                                               args.scale, slots, started, interval, receiver.url, tally,
                                               args.poll_interval)) for i in range(args.clients)]

    async def chaos() -> None:
        turn = 0
        while not all(c.done() for c in clients):
            await asyncio.sleep(0.5)
            stack.watch_requeues()
            if time.monotonic() - started >= (turn + 1) * args.kill_every:
                kill = stack.kill_one(turn)
                kill["at_s"] = round(time.monotonic() - started, 1)
                turn += 1
        stack.watch_requeues()

    chaos_task = asyncio.create_task(chaos())
    try:
        await asyncio.wait_for(asyncio.gather(*clients), timeout=args.jobs / args.rate + args.drain_seconds)
    except asyncio.TimeoutError:
        for c in clients:
            c.cancel()
    await chaos_task
    load_seconds = time.monotonic() - started

    # Read everything again, as a client would later: the same status, the same result bytes.
    changed = []
    rereaders = {key: Connection(stack.port, key) for key in stack.keys}
    for record in list(tally.jobs.values()):
        reader = rereaders[stack.keys[record.client % len(stack.keys)]]
        again = await request(reader, tally, "reread", "GET", f"/v1/jobs/{record.job_id}")
        if again is None:
            continue
        status = again.json().get("status")
        if record.status in TERMINAL and status != record.status:
            tally.regressions.append(record.job_id)
        if record.status is None and status in TERMINAL:  # finished after its client stopped waiting
            record.status = status
        if record.result_sha is not None:
            result = await request(reader, tally, "reread", "GET", f"/v1/jobs/{record.job_id}/result")
            if result is None or hashlib.sha256(result.content).hexdigest() != record.result_sha:
                changed.append(record.job_id)
    for reader in rereaders.values():
        reader.close()

    # Terminal webhooks: wait a little for the last ones (retries back off), then count.
    deadline = time.monotonic() + args.webhook_wait_seconds
    finished = [r for r in tally.jobs.values() if r.status in TERMINAL]
    while time.monotonic() < deadline and any(not receiver.terminal(r.job_id) for r in finished):
        await asyncio.sleep(0.5)
    webhook_missing = [r.job_id for r in finished if not receiver.terminal(r.job_id)]
    webhook_duplicates = [r.job_id for r in finished if len(receiver.terminal(r.job_id)) > 1]

    statuses = Counter(r.status or "unfinished" for r in tally.jobs.values())
    lost = [r.job_id for r in tally.jobs.values() if r.status not in TERMINAL]
    lost += [r.job_id for r in tally.jobs.values() if r.status == "succeeded" and r.result_sha is None]
    lost += tally.wrong_results
    times_to_finish = [r.finished_at - r.submitted_at for r in tally.jobs.values() if r.finished_at]
    server_errors = {f"{route} {status}": n for (route, status), n in tally.responses.items() if status >= 500}
    too_many = {f"{route} {status}": n for (route, status), n in tally.responses.items() if status == 429}
    return {
        "clients": args.clients, "jobs": args.jobs, "keys": args.keys, "submit_rate_per_s": args.rate,
        "kill_every_s": args.kill_every, "image": f"{args.size}x{args.size} PNG, bicubic x{args.scale}",
        "jobs_accepted": len(tally.jobs),
        "jobs_finished": sum(statuses[s] for s in TERMINAL),
        "finished_by_status": dict(statuses),
        "jobs_lost": len(set(lost)),
        "duplicates_visible_to_clients": len(set(changed) | set(tally.regressions) | set(webhook_duplicates))
        + tally.duplicate_ids,
        "duplicates_detail": {"results_changed": len(changed), "status_changed_after_final": len(tally.regressions),
                              "jobs_with_two_terminal_webhook_ids": len(webhook_duplicates),
                              "ids_given_twice": tally.duplicate_ids},
        "terminal_webhooks_missing": len(webhook_missing),
        "responses_5xx": sum(server_errors.values()), "responses_5xx_by_route": server_errors,
        "responses_429": too_many, "transport_errors": dict(tally.transport_errors),
        "submit_ms_p50": round(statistics.median(tally.submit_seconds) * 1000, 1),
        "submit_ms_p99": round(percentile(tally.submit_seconds, 0.99) * 1000, 1),
        "submit_ms_max": round(max(tally.submit_seconds) * 1000, 1),
        "seconds_to_finish_p50_p99_max": [round(percentile(times_to_finish, q), 2) for q in (0.5, 0.99, 1.0)],
        "run_seconds": round(load_seconds, 1),
        "kills": [{"at_s": k["at_s"], "was_running": len(k["running"]),
                   "back_in_queue_after_s": sorted(k["requeued_after_s"].values())} for k in stack.kills],
        "requeue_after_kill_max_s": max((v for k in stack.kills for v in k["requeued_after_s"].values()), default=None),
        "reaper": {k.decode(): int(v) for k, v in stack.store.redis.hgetall("upscaler:stats").items()
                   if k.startswith((b"reaper:", b"lease_lapsed"))},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=10.0, help="submissions per second, all clients together")
    parser.add_argument("--kill-every", type=float, default=20.0, help="seconds between two worker kills")
    parser.add_argument("--keys", type=int, default=10, help="API keys the clients share (per-key limits apply)")
    parser.add_argument("--size", type=int, default=128, help="side of the square input image")
    parser.add_argument("--scale", type=int, default=4, help="bicubic scale (128 x4: about 60 ms a job here)")
    parser.add_argument("--poll-interval", type=float, default=0.5)
    parser.add_argument("--api-workers", type=int, default=2)
    parser.add_argument("--light-concurrency", type=int, default=4)
    parser.add_argument("--drain-seconds", type=float, default=180, help="how long after the last submission "
                        "clients may wait for their jobs")
    parser.add_argument("--webhook-wait-seconds", type=float, default=60)
    parser.add_argument("--lease-seconds", type=float, help="UPSCALER_LEASE_SECONDS (default: the production one)")
    parser.add_argument("--reaper-interval-seconds", type=float)
    parser.add_argument("--redispatch-after-seconds", type=float)
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="soak-"))
    receiver = Receiver()
    stack = Stack(args, workdir, receiver.url)
    try:
        stack.wait_ready()
        cpu_before = {"api": cpu_seconds(stack.api.pid), "redis": cpu_seconds(stack.redis.process.pid)}
        client_before = time.process_time()
        load_before = os.getloadavg()[0]
        report = (uvloop.run if uvloop is not None else asyncio.run)(soak(args, stack, receiver))
        report["cpu_seconds"] = {"api": round(cpu_seconds(stack.api.pid) - cpu_before["api"], 1),
                                 "redis": round(cpu_seconds(stack.redis.process.pid) - cpu_before["redis"], 1),
                                 "bench client": round(time.process_time() - client_before, 1)}
        report["loadavg_1min_before_after"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
        report["cores"] = os.cpu_count()
        report["services_log"] = str(workdir / "services.log")
        print(json.dumps(report, indent=2, default=str))
        ok = report["jobs_lost"] == 0 and report["duplicates_visible_to_clients"] == 0 \
            and report["responses_5xx"] == 0
        return 0 if ok else 1
    finally:
        stack.stop()


if __name__ == "__main__":
    sys.exit(main())

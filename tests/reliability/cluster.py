"""A private stack for fault tests: its own redis-server (append-only file on, as in the compose file) and
real `python -m worker` processes that a test starts, kills, stops and restarts as it needs; the API
in-process on the same settings. Short leases, a fast reaper and short webhook backoffs keep each fault
test to seconds (the production defaults are in jobs/settings.py)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis
from fastapi.testclient import TestClient

from api.main import create_app
from tests.e2e.helpers import TINY_ZSSR_OVERRIDES, WEBHOOK_SECRET
from jobs.blobs import open_blob_store
from jobs.redis_server import RedisServer
from jobs.settings import Settings
from jobs.store import PENDING_BLOBS_KEY, JobKeys, JobStore

ROOT = Path(__file__).resolve().parents[2]

# Fault-test timings: a dead worker's job is back in the queue within LEASE + REAPER seconds.
FAULT_ENV = {
    "UPSCALER_WEBHOOK_SECRET": WEBHOOK_SECRET,
    "UPSCALER_WEBHOOK_ALLOW_PRIVATE": "true",  # the test receivers listen on 127.0.0.1
    "UPSCALER_WEBHOOK_BACKOFF_SECONDS": "0.3",
    "UPSCALER_WEBHOOK_MAX_ATTEMPTS": "4",
    "UPSCALER_WEBHOOK_TIMEOUT_SECONDS": "1",
    "UPSCALER_ZSSR_OVERRIDES": TINY_ZSSR_OVERRIDES,
    "UPSCALER_DEVICE": "cpu",
    "UPSCALER_LEASE_SECONDS": "4",
    "UPSCALER_REAPER_INTERVAL_SECONDS": "0.5",
    "UPSCALER_REDISPATCH_AFTER_SECONDS": "3",
    "UPSCALER_PROGRESS_INTERVAL_SECONDS": "0.1",
    "UPSCALER_JOB_TIME_LIMIT_SECONDS": "120",
    "UPSCALER_LOG_LEVEL": "INFO",
    # every in-process client has one address ("testclient"): tests/reliability/test_access.py tries 30 wrong keys
    "UPSCALER_AUTH_FAILURE_LIMIT": "0",
    "UPSCALER_BLOB_GRACE_SECONDS": "5",  # with a blob store: a put nothing recorded is swept within seconds
}


def settings_from_env(env: dict[str, str]) -> Settings:
    return Settings(**{("redis_url" if k == "REDIS_URL" else k.removeprefix("UPSCALER_").lower()): v
                       for k, v in env.items() if k != "UPSCALER_LOG_LEVEL" and not k.startswith("AWS_")})


@dataclass
class WorkerProcess:
    process: subprocess.Popen
    queues: str
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.process.poll() is None

    def celery_pids(self) -> list[int]:
        """The pids of the Celery workers: this process, or its children when it supervises several."""
        children = _children(self.pid)
        return children or [self.pid]


@dataclass
class Cluster:
    directory: Path
    redis_server: RedisServer
    env: dict[str, str]
    store: JobStore
    workers: list[WorkerProcess] = field(default_factory=list)
    clients: list[TestClient] = field(default_factory=list)
    started: int = 0  # workers started so far (numbers their log files)

    @property
    def settings(self) -> Settings:
        return settings_from_env(self.env)

    def client(self, **changes) -> TestClient:
        client = TestClient(create_app(Settings(**{**self.settings.model_dump(), **changes})))
        client.__enter__()
        self.clients.append(client)
        return client

    def shut_down(self) -> None:
        """Everything the cluster started: clients, workers, the store's connections, its Redis."""
        self.close_clients()
        self.stop_workers()
        self.store.close()
        self.redis_server.stop()

    def close_clients(self) -> None:
        for client in self.clients:
            client.__exit__(None, None, None)
        self.clients = []

    def start_worker(self, queues: str = "light", *, concurrency: int = 2, wait: bool = True,
                     **env_changes: str) -> WorkerProcess:
        """`python -m worker --queues QUEUES`; with both queues it supervises one process per queue."""
        self.started += 1
        number = self.started
        log_path = self.directory / f"worker-{number}-{queues.replace(',', '+')}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("UPSCALER_", "AWS_")) and k != "REDIS_URL"}
        env.update(self.env, **env_changes, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
        with open(log_path, "wb") as log:
            process = subprocess.Popen([sys.executable, "-m", "worker", "--queues", queues, "--concurrency",
                                        str(concurrency)], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        worker = WorkerProcess(process, queues, log_path)
        self.workers.append(worker)
        if wait:
            self.wait_until_serving(worker)
        return worker

    def wait_until_serving(self, worker: WorkerProcess, timeout: float = 90) -> None:
        """Until every Celery process of `worker` sent a heartbeat (each names itself `{queue}-{pid}@host`)."""
        deadline = time.monotonic() + timeout
        while True:
            names = {name for name, _ in self.store.live_workers(10)}
            pids = worker.celery_pids() if "," in worker.queues else [worker.pid]
            if pids and all(any(n.split("@")[0].endswith(f"-{pid}") for n in names) for pid in pids):
                if "," not in worker.queues or len(pids) == len(worker.queues.split(",")):
                    return
            if not worker.alive() or time.monotonic() > deadline:
                raise AssertionError(f"worker did not start:\n{worker.log()[-3000:]}")
            time.sleep(0.1)

    def kill(self, worker: WorkerProcess, sig: int = signal.SIGKILL) -> None:
        os.kill(worker.pid, sig)
        if sig in (signal.SIGKILL, signal.SIGTERM):
            worker.process.wait(timeout=60)
            self.forget_heartbeats(worker)

    def forget_heartbeats(self, worker: WorkerProcess) -> None:
        """A killed worker's heartbeat lingers for a while: drop it, so waits for live workers mean live ones."""
        for member in self.store.redis.zrange("upscaler:workers", 0, -1):
            if f"-{worker.pid}@" in member.decode():
                self.store.redis.zrem("upscaler:workers", member)

    def stop_workers(self) -> None:
        for worker in self.workers:
            if worker.alive():
                worker.process.send_signal(signal.SIGCONT)
                worker.process.terminate()
        for worker in self.workers:
            try:
                worker.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                worker.process.kill()
                worker.process.wait()
            self.forget_heartbeats(worker)
        self.workers = [w for w in self.workers if w.alive()]

    def worker_running(self, job_id: str) -> WorkerProcess:
        name = self.store.fields(job_id)["worker"]
        pid = int(name.split("@")[0].rsplit("-", 1)[1])
        return next(w for w in self.workers if pid in (w.pid, *w.celery_pids()))

    def restart_redis(self, down_seconds: float, during_outage=None) -> None:
        """Stop redis-server (it writes its append-only file as it goes), wait, start it on the same port and files."""
        self.redis_server.stop()
        if during_outage is not None:
            during_outage()
        time.sleep(down_seconds)
        self.redis_server.start()

    def flush(self) -> None:
        self.store.redis.flushdb()
        if self.store.blobs is not None:
            self.store.blobs.delete(self.store.blobs.keys())

    # --- the job's images, wherever they live (jobs/blobs.py)

    def stored_result(self, job_id: str) -> bytes | None:
        if self.store.blobs is None:
            return self.store.redis.get(JobKeys.of(job_id).result)
        key = self.store.fields(job_id).get("result_key")
        return self.store.blobs.get(key) if key else None

    def has_checkpoint(self, job_id: str) -> bool:
        if self.store.blobs is None:
            return bool(self.store.redis.exists(JobKeys.of(job_id).checkpoint))
        return bool((self.store.fields(job_id) or {}).get("checkpoint_key"))

    def replace_input(self, job_id: str, data: bytes) -> None:
        if self.store.blobs is None:
            self.store.redis.set(JobKeys.of(job_id).input, data, keepttl=True)
        else:
            self.store.blobs.put(self.store.fields(job_id)["input_key"], data)

    def unreferenced_objects(self) -> set[str]:
        """Stored objects that no job record names and no put under way may still record (none may stay)."""
        referenced = set()
        for key in self.store.redis.scan_iter(match="upscaler:job:*", count=500):
            if key.decode().count(":") == 2:  # the record itself, not one of its sub-keys
                named = self.store.redis.hmget(key, "input_key", "result_key", "checkpoint_key")
                referenced |= {k.decode() for k in named if k}
        pending = {k.decode() for k in self.store.redis.zrange(PENDING_BLOBS_KEY, 0, -1)}
        return set(self.store.blobs.keys()) - referenced - pending

    def wait_until_swept(self, timeout: float = 60) -> None:
        """Until every stored object is one that a record names: the sweeper deleted the rest."""
        wait_until(lambda: not self.unreferenced_objects(), timeout=timeout,
                   message=f"objects left behind: {sorted(self.unreferenced_objects())}")


def start_cluster(directory: Path, storage_env: dict[str, str]) -> Cluster:
    """`storage_env`: where images live (tests/conftest.py storage_env); the cluster keeps its objects under a
    prefix of its own."""
    server = RedisServer(directory / "redis", appendonly=True).start()
    storage = dict(storage_env)
    if storage.get("UPSCALER_STORAGE_URL"):
        storage["UPSCALER_STORAGE_URL"] = storage["UPSCALER_STORAGE_URL"].rstrip("/") + "/" + directory.name
    env = {"REDIS_URL": server.url, **FAULT_ENV, **storage}
    settings = settings_from_env(env)
    blobs = open_blob_store(settings.storage_url, s3_endpoint_url=settings.s3_endpoint_url)
    if blobs is not None:
        blobs.ensure_ready()
    return Cluster(directory, server, env, JobStore(server.url, blobs=blobs))


def wait_until(predicate, timeout: float = 60.0, interval: float = 0.05, message: str = ""):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, message or "condition not met in time"
        time.sleep(interval)


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def redis_is_up(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=0.2).ping())
    except redis.RedisError:
        return False

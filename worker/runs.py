"""What surrounds one run of a job: the lease, the stop checks, progress, and how failures are named.

Kept out of `worker.tasks` so a task reads as: load, call sr, save, report.
"""
from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from contextlib import contextmanager
from typing import Any, Iterator

from PIL import Image

import sr
from sr.config import MIN_INFERENCE_MEMORY_MB
from jobs.images import ImageRejected
from jobs.settings import Settings
from jobs.store import JobStore
from worker.exits import EXIT_STUCK_RUN

log = logging.getLogger(__name__)

# Set by Celery's `worker_shutting_down` signal: running jobs stop between steps and are handed back.
shutting_down = threading.Event()
CANCEL_CHECK_SECONDS = 0.2  # how often should_stop asks Redis for the cancel flag


class RunControl:
    """The `progress` and `should_stop` callbacks that one run hands to `sr.upscale`."""

    def __init__(self, store: JobStore, job_id: str, token: str, settings: Settings, *, leased_at: float):
        """`leased_at`: time.monotonic() just before begin_run took the lease (its clock starts no earlier)."""
        self.store, self.job_id, self.token = store, job_id, token
        started = leased_at
        self.deadline = started + settings.job_time_limit_seconds
        self.progress_interval = settings.progress_interval_seconds
        self.lease_lost = threading.Event()
        # Until when this run surely still holds its lease: begin_run set it just now, each renewal moves it
        # on. Past it, another worker may own the job, so the run stops at once (even before the renewal
        # thread hears so): a worker that was merely slow never runs on beside the new owner.
        self.lease_seconds = settings.lease_seconds
        self.lease_held_until = started + self.lease_seconds - lease_margin(self.lease_seconds)
        self.stop_reason: str | None = None  # "canceled" | "timeout" | "shutdown" | "lease_lost"
        self.train_steps: int | None = None
        self.packed_with: int | None = None  # jobs trained together, this one included (worker/packing.py)
        self._last_progress_write = float("-inf")
        self._last_progress_phase = ""
        self._last_cancel_check = float("-inf")

    def should_stop(self) -> bool:
        if self.stop_reason is None:
            self.stop_reason = self._reason_to_stop()
        return self.stop_reason is not None

    def _reason_to_stop(self) -> str | None:
        now = time.monotonic()
        if shutting_down.is_set():
            return "shutdown"
        if self.lease_lost.is_set() or now > self.lease_held_until:
            return "lease_lost"
        if now > self.deadline:
            return "timeout"
        if now - self._last_cancel_check >= CANCEL_CHECK_SECONDS:
            self._last_cancel_check = now
            if self.store.cancel_requested(self.job_id):
                return "canceled"
        return None

    def progress(self, update: sr.Progress) -> None:
        if update.phase == "training":
            self.train_steps = update.step
        now = time.monotonic()
        final = update.step >= update.total_steps
        if (now - self._last_progress_write < self.progress_interval and not final
                and update.phase == self._last_progress_phase):
            return  # at most one write per interval, and one per phase change: Redis is not hammered per step
        self._last_progress_write, self._last_progress_phase = now, update.phase
        self.report(update.phase, update.step, update.total_steps, update.loss)

    def report(self, phase: str, step: int = 0, total_steps: int = 0, loss: float | None = None) -> None:
        progress: dict[str, Any] = {"phase": phase, "step": int(step), "total_steps": int(total_steps)}
        if loss is not None:
            progress["loss"] = round(float(loss), 6)
        self.store.set_progress(self.job_id, self.token, progress)

    def note_resumed(self) -> None:
        """Mark in the job record that this run resumed from a checkpoint (read by the tests and operators)."""
        self.store.set_run_field(self.job_id, self.token, "resumed", "1")

    def save_checkpoint(self, data: bytes) -> None:
        """sr's `checkpoint` callback: keep the latest training state under the job (this run's only)."""
        if not self.store.save_checkpoint(self.job_id, self.token, data):
            log.info("job %s: checkpoint not kept (this run no longer owns the job)", self.job_id)

    def renew(self) -> bool:
        """Renew the lease; True while this run still owns the job."""
        sent = time.monotonic()
        if not self.store.renew_lease(self.job_id, self.token, self.lease_seconds):
            return False
        self.lease_held_until = sent + self.lease_seconds - lease_margin(self.lease_seconds)
        return True

    def pause_before_result(self, pause_seconds: float, hang_seconds: float) -> None:
        """Test hooks (settings, off by default): wait between computing the result and writing it."""
        if hang_seconds:
            log.warning("job %s: test hook: hanging %.1f s before the result write", self.job_id, hang_seconds)
            time.sleep(hang_seconds)
        if pause_seconds:
            log.warning("job %s: test hook: pausing %.1f s before the result write", self.job_id, pause_seconds)
            until = time.monotonic() + pause_seconds
            while not self.should_stop():
                if time.monotonic() >= until:
                    return
                time.sleep(0.1)
            raise sr.Cancelled()

    def lease_may_have_lapsed(self) -> bool:
        """Checked once more before the result is written: a run that was frozen past its lease writes nothing."""
        if self.lease_lost.is_set() or time.monotonic() > self.lease_held_until:
            self.stop_reason = "lease_lost"
            return True
        return False


def lease_margin(lease_seconds: float) -> float:
    # The lease's clock starts when Redis gets the renewal, after it was sent; the margin absorbs a late step.
    return min(1.0, lease_seconds / 10)


@contextmanager
def keep_lease(store: JobStore, job_id: str, token: str, settings: Settings, control: RunControl) -> Iterator[None]:
    """Renew the job's lease every third of its length while the run lasts (a daemon thread).

    If the lease cannot be renewed because another run owns the job now, the run stops between steps.
    The same thread is the run's watchdog: a run still going `job_stop_grace_seconds` after its time
    limit (stuck somewhere that never asks should_stop) is failed with `timeout`, and the process exits
    with EXIT_STUCK_RUN so that it is restarted: a stuck thread cannot be stopped any other way."""
    done = threading.Event()
    give_up_at = control.deadline + settings.job_stop_grace_seconds

    def renew() -> None:
        while not done.wait(settings.lease_seconds / 3):
            if time.monotonic() > give_up_at:
                _end_stuck_run(store, job_id, token, settings)
                return
            try:
                if not control.renew():
                    log.warning("job %s: lease lost to another run; stopping this one", job_id)
                    control.lease_lost.set()
                    return
            except Exception:  # Redis briefly away: keep trying, the lease is longer than one miss
                log.warning("job %s: lease renewal failed; retrying", job_id, exc_info=True)

    thread = threading.Thread(target=renew, name=f"lease-{job_id[:8]}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join(timeout=5)


def _end_stuck_run(store: JobStore, job_id: str, token: str, settings: Settings) -> None:
    error = {"code": "timeout", "message": f"the job ran longer than {settings.job_time_limit_seconds:g} s "
                                           "and did not stop; its worker was restarted"}
    try:
        final, changed = store.finish(job_id, token, "failed", fields={"error": json.dumps(error)})
        log.error("job %s: still running %.0f s past its time limit; ended %s; restarting this worker",
                  job_id, settings.job_stop_grace_seconds, final if changed else "by another run")
    finally:
        logging.shutdown()
        os._exit(EXIT_STUCK_RUN)


def is_out_of_memory(exc: BaseException) -> bool:
    """MemoryError, torch's CUDA OutOfMemoryError, or the RuntimeError of torch's CPU allocator."""
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return True
    return isinstance(exc, RuntimeError) and ("can't allocate memory" in str(exc) or "out of memory" in str(exc))


def failure_for(exc: BaseException) -> dict[str, str]:
    """The job's `error` for an exception raised while loading, upscaling or encoding."""
    if isinstance(exc, (sr.InvalidInput, ImageRejected)):
        return {"code": "invalid_input", "message": str(exc)}
    if is_out_of_memory(exc):
        return {"code": "out_of_memory", "message": "the job ran out of memory"}
    if isinstance(exc, NotImplementedError):
        return {"code": "not_implemented", "message": str(exc) or "not implemented"}
    return {"code": "internal_error", "message": f"{type(exc).__name__} while running the job"}


def overrides_for(overrides: dict[str, Any], preset: str) -> dict[str, Any]:
    """UPSCALER_ZSSR_OVERRIDES is either one object for every preset, or an object keyed by preset name."""
    if overrides and all(key in sr.PRESETS for key in overrides):
        return dict(overrides.get(preset) or {})
    return dict(overrides)


def zssr_config(settings: Settings, preset: str) -> sr.ZSSRConfig | None:
    """The ZSSR config with UPSCALER_ZSSR_OVERRIDES applied over the preset; None = the preset as it is."""
    overrides = overrides_for(settings.zssr_overrides, preset)
    if not overrides:
        return None
    return sr.config_for(preset, overrides)


OOM_RETRIES = 3  # CUDA out of memory: retries with half the inference tile memory each time, then fail


def upscale_job(image: Image.Image, params: dict[str, Any], settings: Settings, control: RunControl,
                resume: bytes | None) -> Image.Image:
    """`sr.upscale` for one job, with the run's callbacks.

    A ZSSR run resumes from `resume` (the last checkpoint of an earlier run of the job); if sr refuses that
    state (another sr version, a changed config), the run starts over instead of failing the job. On CUDA,
    an out-of-memory error is retried with smaller inference tiles (half the `inference_memory_mb` each
    time, OOM_RETRIES times) before the job fails with `out_of_memory`."""
    zssr = params["method"] == "zssr"
    config = zssr_config(settings, params["preset"]) if zssr else None
    retries = 0
    while True:
        hooks = {"checkpoint": control.save_checkpoint, "resume": resume} if zssr else {}
        try:
            return sr.upscale(image, params["scale"], method=params["method"], preset=params["preset"],
                              kernel=params["kernel"], denoise=params.get("denoise", "off"), config=config,
                              device=settings.device, seed=job_seed(control.job_id, params), progress=control.progress,
                              should_stop=control.should_stop, **hooks)
        except sr.InvalidInput:
            if resume is None:
                raise
            log.warning("job %s: sr cannot resume from the stored checkpoint; starting over", control.job_id)
            resume = None
        except Exception as exc:
            if not (zssr and is_cuda_out_of_memory(exc) and retries < OOM_RETRIES):
                raise
            config = smaller_tiles(config or sr.config_for(params["preset"]), settings, params["preset"])
            if config is None:
                raise
            retries += 1
            log.warning("job %s: CUDA out of memory; retrying with inference tiles for %d MB (%d of %d)",
                        control.job_id, config.inference_memory_mb, retries, OOM_RETRIES)
            _release_cuda_memory()
            resume = None  # a checkpoint belongs to its config, and the tile memory is part of it


def job_seed(job_id: str, params: dict[str, Any]) -> int:
    """The job's seed, or, when it gave none, one fixed by its id: every run of a job is then the same run, so a
    re-run resumes from the checkpoint of the run before it (sr refuses a checkpoint of another seed) and running
    a job twice gives one result."""
    seed = params.get("seed")
    return int(seed) if seed is not None else int(job_id[:8], 16) & 0x7FFFFFFF


def warm_up_device(settings: Settings) -> dict[str, float] | None:
    """On a CUDA device, one tiny job per preset (its UPSCALER_ZSSR_OVERRIDES applied) before the first real job,
    so no user's job pays the process's CUDA start-up (sr/warmup.py); seconds per preset. None on the CPU, where a
    process's first job costs under a second more than later ones against the minutes it trains (bench/RESULTS.md):
    not worth delaying a CPU worker's start for."""
    import torch  # noqa: PLC0415 - loaded by sr already; named here to read the device

    device = torch.device(settings.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type != "cuda":
        return None
    configs = {preset: zssr_config(settings, preset) or sr.config_for(preset) for preset in sr.PRESETS}
    return sr.warm_up(str(device), configs)


def smaller_tiles(config: sr.ZSSRConfig, settings: Settings, preset: str) -> sr.ZSSRConfig | None:
    """The same config with half the inference tile memory; None when it is at sr's minimum already."""
    if config.inference_memory_mb <= MIN_INFERENCE_MEMORY_MB:
        return None
    smaller = max(MIN_INFERENCE_MEMORY_MB, config.inference_memory_mb // 2)
    return sr.config_for(preset, {**overrides_for(settings.zssr_overrides, preset), "inference_memory_mb": smaller})


def is_cuda_out_of_memory(exc: BaseException) -> bool:
    """torch.cuda.OutOfMemoryError (or its RuntimeError form); a CPU allocation failure is not retried."""
    return type(exc).__name__ == "OutOfMemoryError" or (isinstance(exc, RuntimeError) and "CUDA out of memory" in str(exc))


def _release_cuda_memory() -> None:
    torch = sys.modules.get("torch")  # loaded by sr; never imported here for its own sake
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def sr_metrics(output: Image.Image) -> dict[str, str]:
    """The job fields the core reports in the output's info["sr"]: train_steps, device, the blur kernel (JSON), and
    the self-check's decision: `fallback` ("blend 0.41" or "cubic"; absent when the net's output stands)."""
    info = getattr(output, "info", {}).get("sr") or {}
    found = {}
    if info.get("train_steps") is not None:
        found["train_steps"] = str(int(info["train_steps"]))
    if info.get("device"):
        found["device"] = str(info["device"])
    kernel = kernel_record(info)
    if kernel is not None:
        found["kernel"] = json.dumps(kernel)
    if info.get("fallback"):
        found["fallback"] = str(info["fallback"])
    return found


# sr names where its kernel came from by the `kernel` argument; the job says what that means.
KERNEL_SOURCES = {"estimate": "estimated", "given": "given"}


def kernel_record(info: dict[str, Any]) -> dict[str, Any] | None:
    """The blur kernel the lr_sons were made with, as the job shows it; None for sr's own cubic downscaling.

    {"size": [kh, kw], "values": [[...]] (rows, summing to 1), "source": "estimated", "factor": the factor sr
    scaled the covariance of the estimate by to explain the input (1.0 = as estimated), "shape": the
    estimate's shape as used ("estimate", "turned 90", "isotropic", ...), "estimation_seconds": ...}."""
    values = info.get("kernel")
    if not values:
        return None
    source = info.get("kernel_source")
    record: dict[str, Any] = {"size": [len(values), len(values[0])], "values": values,
                              "source": KERNEL_SOURCES.get(source, source)}
    if info.get("kernel_factor") is not None:
        record["factor"] = float(info["kernel_factor"])
    if info.get("kernel_shape") is not None:
        record["shape"] = str(info["kernel_shape"])
    if info.get("kernel_estimator") is not None:
        record["estimator"] = str(info["kernel_estimator"])  # "prior" (the learnt kernel prior) or "kernelgan"
    if info.get("kernel_estimation_seconds") is not None:
        record["estimation_seconds"] = float(info["kernel_estimation_seconds"])
    return record


class Heartbeat:
    """Tells the store every few seconds that this worker is alive (GET /readyz counts live workers)."""

    INTERVAL_SECONDS = 5.0

    def __init__(self, store: JobStore, name: str, queues: list[str]):
        self.store, self.name, self.queues = store, name, queues
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                self.store.heartbeat(self.name, self.queues)
            except Exception:
                log.warning("heartbeat failed; retrying", exc_info=True)
            if self._done.wait(self.INTERVAL_SECONDS):
                return

    def stop(self) -> None:
        self._done.set()
        self._thread.join(timeout=5)
        try:
            self.store.forget_worker(self.name, self.queues)
        except Exception:
            log.warning("could not remove this worker's heartbeat", exc_info=True)

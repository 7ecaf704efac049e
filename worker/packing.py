"""Worker-side packing (opt-in, UPSCALER_PACK_JOBS=K > 1): up to K ZSSR jobs of one gpu-queue process trained
together by `sr.packed.upscale_many`, so small images do not leave the device idle.

With K > 1 the gpu queue runs Celery's threads pool with K threads (worker/__main__.py). Each job keeps its own
task thread, which does everything a solo run does (begin_run, the lease, progress, the cancel flag, finish, the
ack); only the upscale itself is handed to the process's one packer thread, which owns the device:

- it takes the first request, waits up to GATHER_SECONDS (or until K requests) for more, and groups them by what
  upscale_many shares (preset, config, scale);
- a group of two or more runs as one pack, each job with its own seed, progress and should_stop; a job that
  stopped (upscale_many gives None for it) raises sr.Cancelled in its task thread, as a solo run's stop does, and
  run_job reads why from its RunControl (canceled, timeout, shutdown, lease lost);
- a group of one, and every job that cannot be packed, runs alone through `upscale_job` (its checkpoints, its
  resume, the CUDA out-of-memory retry) in the packer thread, so there is still one device owner;
- if upscale_many raises, each job of the group runs again alone through `upscale_job`.

Packed runs write no checkpoints (sr.packed has none): a worker killed mid-pack leaves its jobs to start over.
While a job waits for the device, its task thread still answers its stop checks (a cancel, a shutdown, the time
limit) every WAIT_CHECK_SECONDS and withdraws it. A job's time limit counts its wait for the device, and a run
stuck past its limit restarts the whole process (worker/runs.py keep_lease), ending the other jobs' runs too:
their leases lapse and the reaper queues them again.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Hashable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

import sr
from sr.blind import son_jpeg_quality
from sr.packed import upscale_many
from worker.runs import RunControl, job_seed, upscale_job, zssr_config
from jobs.settings import Settings

log = logging.getLogger(__name__)

GATHER_SECONDS = 0.3  # how long the packer waits, after a packable request, for others to pack with it
WAIT_CHECK_SECONDS = 0.2  # how often a waiting task thread asks its RunControl whether to stop

PENDING, TAKEN, WITHDRAWN = "pending", "taken", "withdrawn"


@dataclass(eq=False)
class UpscaleRequest:
    """One job's upscale, handed from its task thread to the packer; the result comes back through `future`."""

    image: Image.Image
    params: dict[str, Any]
    control: RunControl
    resume: bytes | None = None  # an earlier run's checkpoint: such a job resumes alone
    future: Future = field(default_factory=Future)
    state: str = PENDING
    lock: threading.Lock = field(default_factory=threading.Lock)

    def take(self) -> bool:
        """The packer's claim; False when the task thread withdrew the job first."""
        with self.lock:
            if self.state == PENDING:
                self.state = TAKEN
            return self.state == TAKEN

    def withdraw_if_stopping(self) -> bool:
        """The task thread's stop check while it waits: True (and never run) when the job should stop before the
        packer took it. Under the lock, so should_stop is never called by both threads at once."""
        with self.lock:
            if self.state == PENDING and self.control.should_stop():
                self.state = WITHDRAWN
            return self.state == WITHDRAWN


def pack_key(request: UpscaleRequest, settings: Settings) -> Hashable | None:
    """What upscale_many needs its jobs to share (preset, config, scale), or None for a job it cannot run."""
    params = request.params
    if (params["method"] != "zssr" or params.get("kernel", "bicubic") != "bicubic"
            or params.get("denoise", "off") != "off" or request.resume is not None):
        return None
    try:
        config = zssr_config(settings, params["preset"])
        # sr.upscale trains on JPEG-compressed sons for a JPEG input (sr/blind.py); the packed path has no
        # JPEG-aware sons, so such a job (or any job of a config that compresses every son) runs alone.
        if son_jpeg_quality(request.image, config or sr.config_for(params["preset"]))[0]:
            return None
    except Exception:  # a bad config or image: run alone, where upscale_job names the failure
        return None
    scale = params["scale"]
    return params["preset"], config, tuple(scale) if isinstance(scale, list) else scale


def group_requests(requests: list[UpscaleRequest], settings: Settings) -> list[list[UpscaleRequest]]:
    """The requests in groups to run, in the order their first request came: one per pack key, and each job that
    cannot be packed on its own."""
    groups: list[list[UpscaleRequest]] = []
    by_key: dict[Hashable, list[UpscaleRequest]] = {}
    for request in requests:
        key = pack_key(request, settings)
        if key is None:
            groups.append([request])
        elif key in by_key:
            by_key[key].append(request)
        else:
            by_key[key] = [request]
            groups.append(by_key[key])
    return groups


class Packer:
    """The process's one device owner: a daemon thread that runs the requests of up to `size` task threads."""

    def __init__(self, settings: Settings, size: int):
        self.settings, self.size = settings, size
        self.requests: queue.Queue[UpscaleRequest] = queue.Queue()
        self._thread = threading.Thread(target=self._serve, name="packer", daemon=True)
        self._thread.start()

    def upscale(self, image: Image.Image, params: dict[str, Any], control: RunControl,
                resume: bytes | None) -> Image.Image:
        """What `upscale_job` returns (or raises) for this job, run by the packer; called from the job's thread."""
        request = UpscaleRequest(image, params, control, resume)
        self.requests.put(request)
        while True:
            try:
                return request.future.result(timeout=WAIT_CHECK_SECONDS)
            except TimeoutError:
                if request.withdraw_if_stopping():
                    raise sr.Cancelled() from None

    def _serve(self) -> None:
        while True:
            taken = self._gather()
            try:
                for group in group_requests(taken, self.settings):
                    if len(group) == 1:
                        self._run_alone(group[0])
                    else:
                        self._run_packed(group)
            except BaseException as exc:  # a bug here must not leave task threads waiting for ever
                log.exception("the packer failed; its jobs fail with it")
                for request in taken:
                    if not request.future.done():
                        request.future.set_exception(exc)

    def _gather(self) -> list[UpscaleRequest]:
        """The next request and, when it can be packed, those that come within GATHER_SECONDS (up to `size`)."""
        taken = self._take([self.requests.get()])
        if not taken or pack_key(taken[0], self.settings) is None:
            return taken
        deadline = time.monotonic() + GATHER_SECONDS
        while len(taken) < self.size:
            try:
                more = self.requests.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            taken += self._take([more])
        return taken

    @staticmethod
    def _take(requests: list[UpscaleRequest]) -> list[UpscaleRequest]:
        return [request for request in requests if request.take()]

    def _run_alone(self, request: UpscaleRequest) -> None:
        try:
            request.future.set_result(upscale_job(request.image, request.params, self.settings, request.control,
                                                  request.resume))
        except BaseException as exc:  # the task thread raises it and ends the job as a solo run would
            request.future.set_exception(exc)

    def _run_packed(self, group: list[UpscaleRequest]) -> None:
        first = group[0].params
        job_ids = [request.control.job_id for request in group]
        log.info("packing %d jobs (%s): %s", len(group), first["preset"], ", ".join(job_ids))
        try:
            outputs = upscale_many([request.image for request in group], first["scale"], preset=first["preset"],
                                   config=zssr_config(self.settings, first["preset"]), kernel="bicubic",
                                   seeds=[job_seed(r.control.job_id, r.params) for r in group],
                                   device=self.settings.device, progress=[r.control.progress for r in group],
                                   should_stop=[r.control.should_stop for r in group], pack_size=len(group))
        except Exception:
            log.warning("packed run of %s failed; running each job alone", ", ".join(job_ids), exc_info=True)
            for request in group:
                self._run_alone(request)
            return
        for request, output in zip(group, outputs):
            if output is None:  # it stopped: its RunControl knows why
                request.future.set_exception(sr.Cancelled())
                continue
            request.control.packed_with = len(group)
            request.future.set_result(output)

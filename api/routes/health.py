"""Liveness, readiness and metrics."""
from __future__ import annotations

import redis
from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from api import metrics
from api.deps import StoreDep
from api.schemas import Readiness
from jobs.queue import PRIORITY_SEPARATOR, PRIORITY_STEPS, QUEUES

router = APIRouter(tags=["health"])
WORKER_ALIVE_SECONDS = 20  # workers beat every 5 s


@router.get("/healthz")
async def read_health() -> dict[str, str]:
    """The API process is up (says nothing about Redis or workers)."""
    return {"status": "ok"}


@router.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}})
async def read_readiness(store: StoreDep) -> JSONResponse:
    """Ready when Redis answers and at least one worker sent a heartbeat recently."""
    try:
        await store.ping()
        workers = await store.live_workers(WORKER_ALIVE_SECONDS)
        reachable = True
    except redis.RedisError:
        workers, reachable = [], False
    per_queue = {queue: sum(1 for _, queues in workers if queue in queues) for queue in QUEUES}
    ready = reachable and bool(workers)
    body = {"status": "ready" if ready else "not_ready", "redis": reachable, "workers": len(workers),
            "queues": per_queue}
    return JSONResponse(body, status_code=200 if ready else 503, headers={} if ready else {"Retry-After": "5"})


@router.get("/metrics", response_class=Response)
async def read_metrics(store: StoreDep) -> Response:
    """Prometheus text format: jobs by status, queue depth, job queue/run seconds, webhook deliveries."""
    stats = await store.stats()
    depths = await store.queue_depths(QUEUES, PRIORITY_STEPS, PRIORITY_SEPARATOR)
    workers = await store.live_workers(WORKER_ALIVE_SECONDS)
    pending = await store.pending_events()
    return Response(metrics.render(stats, depths, workers, pending), media_type=CONTENT_TYPE_LATEST)

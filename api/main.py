"""Builds the FastAPI application: `create_app(settings)` (tests pass their own settings)."""
from __future__ import annotations

import logging
from contextlib import asynccontextmanager

import redis
from fastapi import FastAPI
from PIL import Image

from api.errors import install_error_handlers
from api.limits import BodySizeLimit
from api.routes import events, health, jobs, page
from worker.celery_app import make_celery, run_job_message
from worker.heap import freeze_startup_objects
from worker.settings import QUEUES, Settings, load_settings
from worker.store import AsyncJobStore

log = logging.getLogger(__name__)
DESCRIPTION = """Upscale images with ZSSR ("Zero-Shot" Super-Resolution) or bicubic, as asynchronous jobs:
submit (`POST /v1/jobs`), poll (`GET /v1/jobs/{id}`), fetch (`GET /v1/jobs/{id}/result`), cancel, and
receive signed webhooks (Standard Webhooks), or follow a job live (`GET /v1/jobs/{id}/events`, Server-Sent
Events). Send the API key as `Authorization: Bearer KEY`. A demo page that uses this API is served at `/`."""


# Opened at start-up: the first burst of concurrent requests (a client pool's first round) would otherwise open
# them all at once, each a connect and a handshake while the burst waits.
WARM_REDIS_CONNECTIONS = 64


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or load_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.store = AsyncJobStore(settings.redis_url, tombstone_seconds=settings.tombstone_seconds)
        app.state.celery = make_celery(settings)  # builds run_job messages; the store pushes them
        await warm_up(app)
        try:
            yield
        finally:
            app.state.celery.close()
            await app.state.store.close()

    app = FastAPI(title="ZSSR upscaler", version="0.1.0", description=DESCRIPTION, lifespan=lifespan)
    app.state.settings = settings
    install_error_handlers(app)
    app.add_middleware(BodySizeLimit, max_image_bytes=settings.max_upload_bytes)
    app.include_router(jobs.router)
    app.include_router(events.router)
    app.include_router(health.router)
    app.include_router(page.router)
    app.mount("/static", page.static_files(), name="static")
    return app


async def warm_up(app: FastAPI) -> None:
    """Do once, before the first request, what the first submissions would otherwise all wait for: Pillow's
    format plugins, each queue's run_job message template, the store's scripts and a few Redis connections."""
    Image.init()
    for queue in QUEUES:
        run_job_message(app.state.celery, "0" * 32, queue)
    try:
        await app.state.store.warm_up(connections=WARM_REDIS_CONNECTIONS)
    except redis.RedisError:  # Redis not up yet: the API starts anyway and answers 503 until it is
        log.warning("job store unreachable at start-up; requests get 503 until it answers")
    freeze_startup_objects()


def app_from_env() -> FastAPI:
    """The uvicorn factory: `uvicorn --factory api.main:app_from_env`."""
    return create_app(load_settings())

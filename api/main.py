"""Builds the FastAPI application: `create_app(settings)` (tests pass their own settings)."""
from __future__ import annotations

import logging
from contextlib import asynccontextmanager

import anyio
import redis
from fastapi import FastAPI
from PIL import Image
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp

from api.deps import AuthFailures
from api.errors import install_error_handlers
from api.headers import HeadAsGet, NoSniff
from api.limits import BodySizeLimit
from api.routes import events, health, jobs, page
from jobs.blobs import StorageUnavailable, open_blob_store
from jobs.heap import freeze_startup_objects
from jobs.queue import QUEUES, run_job_message
from jobs.settings import Settings, load_settings
from jobs.store import AsyncJobStore

log = logging.getLogger(__name__)
DESCRIPTION = """Upscale images with ZSSR ("Zero-Shot" Super-Resolution) or bicubic, as asynchronous jobs:
submit (`POST /v1/jobs`), poll (`GET /v1/jobs/{id}`), fetch (`GET /v1/jobs/{id}/result`), cancel, and
receive signed webhooks (Standard Webhooks), or follow a job live (`GET /v1/jobs/{id}/events`, Server-Sent
Events). Send the API key as `Authorization: Bearer KEY`. A demo page that uses this API is served at `/`."""


# Opened at start-up: the first burst of concurrent requests (a client pool's first round) would otherwise open
# them all at once, each a connect and a handshake while the burst waits.
WARM_REDIS_CONNECTIONS = 64
# Requested in-process at start-up, neither needing a key nor the store: a path no route serves (answered 404 by
# routing, which walks every router on the way) and the liveness route (one whole request handler).
WARM_UP_PATHS = ("/.warm-up", "/healthz")
# What a browser app on an allowed origin (UPSCALER_CORS_ORIGINS) may send and read; the key travels in a header,
# never in a cookie, so no credentials mode.
CORS_METHODS = ("GET", "HEAD", "POST")
CORS_REQUEST_HEADERS = ("Authorization", "X-Api-Key", "Content-Type", "Idempotency-Key")
CORS_EXPOSED_HEADERS = ("Location", "Retry-After", "Content-Disposition")
CORS_MAX_AGE_SECONDS = 600


class UpscalerAPI(FastAPI):
    """FastAPI with HEAD as GET and `nosniff` around everything, Starlette's error middleware (its 500s) included."""

    def build_middleware_stack(self) -> ASGIApp:
        return NoSniff(HeadAsGet(super().build_middleware_stack()))


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or load_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.store = AsyncJobStore(settings.redis_url, tombstone_seconds=settings.tombstone_seconds)
        app.state.blobs = open_blob_store(settings.storage_url, s3_endpoint_url=settings.s3_endpoint_url)
        await warm_up(app)
        try:
            yield
        finally:
            await app.state.store.close()

    # redirect_slashes off: Starlette's redirect of /v1/jobs/ to /v1/jobs builds its Location from the Host header
    app = UpscalerAPI(title="ZSSR upscaler", version="0.1.0", description=DESCRIPTION, lifespan=lifespan,
                      redirect_slashes=False)
    app.state.settings = settings
    app.state.auth_failures = AuthFailures(settings.auth_failure_limit, settings.auth_failure_window_seconds)
    install_error_handlers(app)
    app.add_middleware(BodySizeLimit, max_image_bytes=settings.max_upload_bytes)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=CORS_METHODS,
                           allow_headers=CORS_REQUEST_HEADERS, expose_headers=CORS_EXPOSED_HEADERS,
                           max_age=CORS_MAX_AGE_SECONDS)
    app.include_router(jobs.router)
    app.include_router(events.router)
    app.include_router(health.router)
    app.include_router(page.router)
    app.mount("/static", page.static_files(), name="static")
    return app


async def warm_up(app: FastAPI) -> None:
    """Do once, before the first request, what the first submissions would otherwise all wait for: FastAPI's
    route tables, Pillow's format plugins, each queue's run_job message template, the store's scripts and a few
    Redis connections."""
    for path in WARM_UP_PATHS:
        await get_in_process(app, path)
    Image.init()
    for queue in QUEUES:
        run_job_message("0" * 32, queue)
    try:
        await app.state.store.warm_up(connections=WARM_REDIS_CONNECTIONS)
    except redis.RedisError:  # Redis not up yet: the API starts anyway and answers 503 until it is
        log.warning("job store unreachable at start-up; requests get 503 until it answers")
    if app.state.blobs is not None:
        try:  # the bucket (or directory) is created if it is missing and the credentials allow it
            await anyio.to_thread.run_sync(app.state.blobs.ensure_ready)
        except StorageUnavailable:
            log.warning("image store unreachable at start-up; submissions get 503 until it answers")
    freeze_startup_objects()


async def get_in_process(app: FastAPI, path: str) -> int:
    """GET `path` through the whole ASGI stack in-process; returns the status.

    FastAPI builds each included router's table of routes (dependencies, response fields, path patterns) on the
    first request that walks it, and a route's endpoint context (it reads the endpoint's source) on the route's
    first request. Unwarmed, the first burst of concurrent submissions pays for that before any is answered
    (bench/RESULTS.md, the API's submit path). A readiness probe that comes first warms the routers the same way
    (bench/api_load.py waits on /readyz); a client's first request must not depend on it."""
    status = 0
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
             "headers": [(b"host", b"localhost")], "client": ("127.0.0.1", 0), "server": ("127.0.0.1", 0)}

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(scope, receive, send)
    return status


def app_from_env() -> FastAPI:
    """The uvicorn factory: `uvicorn --factory api.main:app_from_env`."""
    return create_app(load_settings())

"""Every error the API answers has the shape `{"error": {"code": str, "message": str}}`.

This includes FastAPI's own validation errors, Starlette's 404/405 (a 405 lists every method of its path), a body over
the size limit, a Redis outage (503 with Retry-After) and anything unexpected (500, logged, no traceback in the
answer). A client that goes away before its body arrived gets nothing, and leaves one debug line.
"""
from __future__ import annotations

import logging

import kombu.exceptions
import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from api.headers import allowed_methods

log = logging.getLogger(__name__)
STORE_RETRY_AFTER_SECONDS = 5
_STATUS_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
                 405: "method_not_allowed", 406: "not_acceptable", 409: "conflict", 410: "gone",
                 413: "payload_too_large", 415: "unsupported_media_type", 422: "invalid_parameters",
                 429: "too_many_requests", 503: "unavailable"}


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


def _describe_validation(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path", "header"))
        parts.append(f"{where}: {err.get('msg')}" if where else str(err.get("msg")))
    return "; ".join(parts) or "invalid request"


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(422, "invalid_parameters", _describe_validation(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _STATUS_CODES.get(exc.status_code, "http_error")
        message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
        headers = getattr(exc, "headers", None)
        if exc.status_code == 405:
            headers = {**(headers or {}), "Allow": allowed_methods(request)}
        return error_response(exc.status_code, code, message, headers)

    @app.exception_handler(ClientDisconnect)
    async def _client_gone(request: Request, _: ClientDisconnect) -> Response:
        # Any client can cut its upload short, as often as it likes: a traceback each time would flood the log.
        log.debug("%s %s: the connection closed before the body arrived", request.method, request.scope["path"])
        return Response(status_code=400)  # never sent: the server drops what is sent to a closed connection

    @app.exception_handler(redis.RedisError)
    async def _store_down(_: Request, exc: redis.RedisError) -> JSONResponse:
        log.warning("job store unavailable: %s", type(exc).__name__)
        return error_response(503, "store_unavailable", "the job store is unavailable; retry shortly",
                              {"Retry-After": str(STORE_RETRY_AFTER_SECONDS)})

    @app.exception_handler(kombu.exceptions.OperationalError)
    async def _queue_down(_: Request, exc: kombu.exceptions.OperationalError) -> JSONResponse:
        log.warning("job queue unavailable: %s", type(exc).__name__)
        return error_response(503, "queue_unavailable", "the job queue is unavailable; retry shortly",
                              {"Retry-After": str(STORE_RETRY_AFTER_SECONDS)})

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error")
        return error_response(500, "internal_error", "internal error")

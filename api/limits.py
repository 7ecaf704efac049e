"""Request body size limit, enforced while the body streams in (pure ASGI middleware).

A declared Content-Length over the limit is answered 413 before any byte is read; a chunked body (no
Content-Length) is counted as it arrives and stopped at the limit, so nothing is ever read whole first.
"""
from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import error_response

MULTIPART_OVERHEAD_BYTES = 64 * 1024  # form fields and part headers around the image


class BodyTooLarge(Exception):
    pass


def body_limit(max_image_bytes: int, content_type: str) -> int:
    """The body may hold the image plus a little: base64 in JSON is 4/3 of the image, multipart adds headers."""
    if content_type.startswith("application/json"):
        return (max_image_bytes + 2) // 3 * 4 + MULTIPART_OVERHEAD_BYTES
    return max_image_bytes + MULTIPART_OVERHEAD_BYTES


class BodySizeLimit:
    def __init__(self, app: ASGIApp, max_image_bytes: int):
        self.app, self.max_image_bytes = app, max_image_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        if b"content-length" not in headers and b"transfer-encoding" not in headers:
            await self.app(scope, receive, send)  # no body (RFC 9112 6.3): a poll skips the counting wrappers
            return
        limit = body_limit(self.max_image_bytes, headers.get(b"content-type", b"").decode("latin-1").lower())
        declared = headers.get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            await _too_large(limit)(scope, receive, send)
            return
        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge()
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except BodyTooLarge:
            if started:
                raise
            await _too_large(limit)(scope, receive, send)


def _too_large(limit: int):
    return error_response(413, "payload_too_large", f"the request body exceeds {limit} bytes",
                          {"Connection": "close"})

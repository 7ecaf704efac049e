"""What every answer gets, whichever route (or none) serves it: HEAD answered as GET without a body, `nosniff`, and
the `Allow` list of a 405 (pure ASGI: they wrap the whole application, its 500s included).

FastAPI's routes serve only the methods they name (Starlette's plain routes add HEAD to GET; FastAPI's do not), and a
405 lists the methods of the first route whose path matched (`PUT /v1/jobs` answered `Allow: POST`, though GET is
served there too).
"""
from __future__ import annotations

from starlette.requests import Request
from starlette.routing import Match, Mount
from starlette.types import ASGIApp, Message, Receive, Scope, Send

NOSNIFF = (b"x-content-type-options", b"nosniff")
# What a mount (the static files) serves, and the methods tried against the routes for `Allow`
MOUNT_METHODS = frozenset({"GET", "HEAD"})
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")


class HeadAsGet:
    """A HEAD request is served by the GET route of its path; its answer ends after the headers (with GET's
    Content-Length), and whatever the route still sends is dropped (an event stream ends when the route sees the
    client gone, as after any finished answer)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return
        finished = False

        async def headers_only(message: Message) -> None:
            nonlocal finished
            if finished:
                return
            await send(message)
            if message["type"] == "http.response.start":
                finished = True
                await send({"type": "http.response.body", "body": b"", "more_body": False})

        await self.app({**scope, "method": "GET"}, receive, headers_only)


class NoSniff:
    """`X-Content-Type-Options: nosniff` on every answer, so no browser reads a JSON error or a result as HTML."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_nosniff(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", ()))
                if not any(name.lower() == NOSNIFF[0] for name, _ in headers):
                    message = {**message, "headers": headers + [NOSNIFF]}
            await send(message)

        await self.app(scope, receive, with_nosniff)


def allowed_methods(request: Request) -> str:
    """Every method some route serves at this request's path, HEAD wherever GET is (HeadAsGet), for `Allow`.

    Each method is tried against the routes (FastAPI nests an included router's routes in one entry, whose own
    match says only whether some route there serves the method); a mount (the static files) serves GET and HEAD."""
    # as the application saw the request: inside a mount, root_path has grown by the mount's path
    scope = {**request.scope, "root_path": request.scope.get("app_root_path", request.scope.get("root_path", ""))}
    methods: set[str] = set()
    for route in request.app.router.routes:
        if isinstance(route, Mount):
            if route.matches(scope)[0] != Match.NONE:
                methods |= MOUNT_METHODS
            continue
        methods |= {method for method in METHODS if route.matches({**scope, "method": method})[0] == Match.FULL}
    if "GET" in methods:
        methods.add("HEAD")
    return ", ".join(sorted(methods))

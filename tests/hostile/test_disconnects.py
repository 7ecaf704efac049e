"""A client that goes away while sending its body (shorter than its Content-Length, a chunked body cut short) ends
its request quietly: no traceback in the API's log, at most one line (a debug line) per request, on every route.

`python -m api --log-level debug` runs as its own process; each request is written over a raw socket and the socket
shut down at one of many offsets into the body.
"""
from __future__ import annotations

import base64
import json
import re
import socket
import time

import httpx
import pytest

from tests.e2e.helpers import png_bytes
from tests.hostile.conftest import ApiProcess

JOB = "0" * 32
# Every route the API serves, with a body it could be sent (the ones that take none get one too: the client decides)
ROUTES = [("POST", "/v1/jobs"), ("GET", "/v1/jobs"), ("GET", f"/v1/jobs/{JOB}"), ("GET", f"/v1/jobs/{JOB}/result"),
          ("POST", f"/v1/jobs/{JOB}/cancel"), ("GET", f"/v1/jobs/{JOB}/events"), ("GET", "/healthz"),
          ("GET", "/readyz"), ("GET", "/metrics"), ("GET", "/"), ("GET", "/static/app.js"), ("GET", "/docs"),
          ("GET", "/openapi.json"), ("PUT", "/v1/jobs")]
BOUNDARY = "cut-boundary"
ACCESS_LINE = re.compile(r'INFO: +[0-9.]+:[0-9]+ - "[A-Z]+ \S+ HTTP/1\.1" [0-9]{3} ')


def submission_bodies() -> dict[str, tuple[str, bytes]]:
    image = png_bytes(48, 48)
    multipart = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"method\"\r\n\r\nbicubic\r\n"
                 f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\n"
                 "Content-Type: image/png\r\n\r\n").encode() + image + f"\r\n--{BOUNDARY}--\r\n".encode()
    document = json.dumps({"image_base64": base64.b64encode(image).decode(), "method": "bicubic"}).encode()
    return {"json": ("application/json", document),
            "multipart": (f"multipart/form-data; boundary={BOUNDARY}", multipart)}


def offsets(length: int) -> list[int]:
    """Where bodies are cut: none of it, the first bytes, spread through it, the last bytes."""
    return sorted({0, 1, 2, 7, 64, length // 4, length // 3, length // 2, 2 * length // 3, length - 7, length - 2,
                   length - 1} & set(range(length)))


def chunked(body: bytes, size: int = 200) -> bytes:
    return b"".join(b"%x\r\n" % len(body[i:i + size]) + body[i:i + size] + b"\r\n"
                    for i in range(0, len(body), size)) + b"0\r\n\r\n"


def send_cut(port: int, method: str, path: str, content_type: str, body: bytes, cut: int, *, chunks: bool) -> None:
    """Send the request's headers and the first `cut` bytes of its (framed) body, then close the socket."""
    head = f"{method} {path} HTTP/1.1\r\nHost: test\r\nContent-Type: {content_type}\r\n"
    head += "Transfer-Encoding: chunked\r\n\r\n" if chunks else f"Content-Length: {len(body)}\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(head.encode() + body[:cut])
        time.sleep(0.005)  # the server reads the headers and starts the route, which waits for the rest
        sock.shutdown(socket.SHUT_WR)


def new_lines(api: ApiProcess, before: int) -> list[str]:
    time.sleep(1.0)  # the server notices each closed connection and ends its request
    return api.log_lines()[before:]


def assert_quiet(lines: list[str], requests: int) -> None:
    assert not [line for line in lines if "Traceback" in line or "Exception" in line or "ERROR" in line], \
        "\n".join(lines[:40])
    own = [line for line in lines if not ACCESS_LINE.match(line)]  # the access lines are of answers given
    assert all(line.startswith("DEBUG") for line in own), "\n".join(own[:40])
    assert len(own) <= requests


@pytest.fixture
def api(start_api) -> ApiProcess:
    return start_api("debug")


@pytest.mark.parametrize("kind", ["json", "multipart"])
@pytest.mark.parametrize("chunks", [False, True], ids=["content-length", "chunked"])
def test_a_submission_cut_off_at_any_offset_ends_quietly(api, kind, chunks):
    content_type, body = submission_bodies()[kind]
    framed = chunked(body) if chunks else body
    before = len(api.log_lines())
    cuts = offsets(len(framed))
    for cut in cuts:
        send_cut(api.port, "POST", "/v1/jobs", content_type, framed, cut, chunks=chunks)
    lines = new_lines(api, before)
    assert_quiet(lines, len(cuts))
    assert sum("the connection closed before the body arrived" in line for line in lines) >= len(cuts) // 2
    assert httpx.get(f"http://127.0.0.1:{api.port}/healthz").status_code == 200


def test_every_route_ends_a_cut_off_body_quietly(api):
    content_type, body = submission_bodies()["json"]
    before = len(api.log_lines())
    sent = 0
    for method, path in ROUTES:
        for chunks in (False, True):
            framed = chunked(body) if chunks else body
            for cut in (0, 1, len(framed) // 2):
                send_cut(api.port, method, path, content_type, framed, cut, chunks=chunks)
                sent += 1
    assert_quiet(new_lines(api, before), sent)
    assert httpx.get(f"http://127.0.0.1:{api.port}/healthz").status_code == 200


def test_a_malformed_chunk_is_answered_400_without_a_traceback(api):
    # The probe's reproducer: a chunk size that is not hexadecimal.
    before = len(api.log_lines())
    with socket.create_connection(("127.0.0.1", api.port), timeout=5) as sock:
        sock.sendall(b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n")
        assert sock.recv(4096).startswith(b"HTTP/1.1 400")
    lines = new_lines(api, before)
    # uvicorn's own warning for a request it cannot parse, and at most the route's debug line
    assert [line for line in lines if not line.startswith("DEBUG")] == ["WARNING:  Invalid HTTP request received."]
    assert len(lines) <= 2

"""Slow clients are cut off: a connection whose request headers do not arrive within UPSCALER_CLIENT_TIMEOUT_SECONDS,
or whose body stalls that long, is answered 408 and closed; a client that keeps sending within it is served.

`python -m api` runs as its own process with a 1 s deadline; the bounds below (a few seconds) only tell "closed by
the deadline" from "never closed" (a black-box probe found all such connections still open after 20-28 s).
"""
from __future__ import annotations

import socket
import time

import pytest

from tests.e2e.helpers import png_bytes
from tests.hostile.conftest import ApiProcess

DEADLINE = 1.0
NEVER = 8.0  # seconds: a connection still open this long after its deadline was not cut off


@pytest.fixture
def api(start_api) -> ApiProcess:
    return start_api("debug", UPSCALER_CLIENT_TIMEOUT_SECONDS=str(DEADLINE))


def read_until_closed(sock: socket.socket, *, trickle: bytes = b"", every: float = 0.2) -> tuple[bytes, float]:
    """Read (sending `trickle` one byte at a time, `every` seconds apart) until the server closes; returns what it
    answered and how long after the call that was."""
    started = time.monotonic()
    answer = b""
    sock.settimeout(every)
    while time.monotonic() - started < DEADLINE + NEVER:
        if trickle:
            try:
                sock.send(trickle[:1])
            except OSError:
                break
            trickle = trickle[1:]
        try:
            chunk = sock.recv(4096)
        except socket.timeout:
            continue
        except OSError:
            break
        if not chunk:
            break
        answer += chunk
    return answer, time.monotonic() - started


def connect(api: ApiProcess) -> socket.socket:
    return socket.create_connection(("127.0.0.1", api.port), timeout=5)


def test_a_connection_that_sends_nothing_is_closed(api):
    with connect(api) as sock:
        answer, seconds = read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 408") and seconds < DEADLINE + NEVER


def test_headers_sent_a_byte_at_a_time_are_cut_off(api):
    head = b"GET /v1/jobs HTTP/1.1\r\nHost: x\r\n" + b"X-Slow: " + b"a" * 200 + b"\r\n\r\n"
    with connect(api) as sock:
        answer, seconds = read_until_closed(sock, trickle=head)
    assert answer.startswith(b"HTTP/1.1 408") and seconds < DEADLINE + NEVER


def test_a_body_that_stalls_is_cut_off_and_its_request_ends_quietly(api):
    before = len(api.log_lines())
    with connect(api) as sock:
        sock.sendall(b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 1000\r\n\r\n" + b'{"image_base64": "AAAA')
        answer, seconds = read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 408") and seconds < DEADLINE + NEVER
    lines = api.log_lines()[before:]
    assert not [line for line in lines if "Traceback" in line or "ERROR" in line], lines


def test_a_kept_alive_connections_next_request_has_its_own_deadline(api):
    with connect(api) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(0.2)  # the first answer is in
        answer, seconds = read_until_closed(sock, trickle=b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"X: y\r\n" * 40)
    first, second = answer.split(b"HTTP/1.1 ")[1:]
    assert first.startswith(b"200") and second.startswith(b"408") and seconds < DEADLINE + NEVER


def test_a_body_that_keeps_coming_within_the_deadline_is_served(api):
    """The body's deadline is between two reads, not on the whole body: an upload in pieces is served."""
    image = png_bytes(32, 32)
    body = (b'--b\r\nContent-Disposition: form-data; name="method"\r\n\r\nbicubic\r\n--b\r\n'
            b'Content-Disposition: form-data; name="image"; filename="a.png"\r\nContent-Type: image/png\r\n\r\n'
            + image + b"\r\n--b--\r\n")
    pieces = [body[i:i + len(body) // 4 + 1] for i in range(0, len(body), len(body) // 4 + 1)]
    with connect(api) as sock:
        sock.sendall(b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(body))
        for piece in pieces:  # 4 pieces, 0.6 s apart: 1.8 s in all, each pause within the 1 s deadline
            time.sleep(DEADLINE * 0.6)
            sock.sendall(piece)
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 202"), answer[:300]


def test_headers_without_end_are_refused_before_the_deadline(api):
    """Within its deadline a client could send header lines without end (httptools sets no bound): past 64 KiB the
    request is refused (400) and the connection closed."""
    with connect(api) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        try:
            for _ in range(100):  # 100 x 2 KiB
                sock.sendall(b"X-Pad: " + b"p" * 2040 + b"\r\n")
        except OSError:
            pass  # closed while sending: refused
        answer, seconds = read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 400") and seconds < DEADLINE

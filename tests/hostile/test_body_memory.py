"""The API process's memory does not grow with the size of a body over the limit, declared or chunked.

`python -m api` runs as its own process (its resident memory is read from /proc); bodies of 4 MB to 256 MB
are streamed at it over raw sockets, with and without Content-Length, against a 1 MB upload limit.
"""
from __future__ import annotations

import socket
from pathlib import Path

import pytest

LIMIT = 1024 * 1024
MiB = 1024 * 1024


def resident_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.fixture
def api_process(start_api):
    api = start_api(UPSCALER_MAX_UPLOAD_BYTES=str(LIMIT))
    return api.process, api.port


def stream_body(port: int, size: int, *, chunked: bool, content_type: str) -> tuple[bytes, int]:
    """Send a POST /v1/jobs whose body is `size` bytes of zeros; return the answer and how much was sent."""
    # A well-formed start (a file part, or a JSON string), then more of the same than the limit allows.
    if content_type.startswith("multipart"):
        start = (b'--x\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
                 b"Content-Type: image/png\r\n\r\n")
        piece = b"\0" * 65536
    else:
        start, piece = b'{"image_base64": "', b"A" * 65536
    head = f"POST /v1/jobs HTTP/1.1\r\nHost: test\r\nContent-Type: {content_type}\r\n"
    head += "Transfer-Encoding: chunked\r\n\r\n" if chunked else f"Content-Length: {len(start) + size}\r\n\r\n"
    frame = (lambda data: (b"%x\r\n" % len(data)) + data + b"\r\n") if chunked else (lambda data: data)
    framed = frame(piece)
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head.encode() + frame(start))
        try:
            while sent < size:
                sock.sendall(framed)
                sent += len(piece)
            if chunked:
                sock.sendall(b"0\r\n\r\n")
        except OSError:  # the server answered and closed: it stopped reading, as it should
            pass
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except OSError:
            pass
    return answer, sent


@pytest.mark.parametrize("content_type", ["multipart/form-data; boundary=x", "application/json"])
def test_memory_does_not_grow_with_the_size_of_a_refused_body(api_process, content_type):
    process, port = api_process
    stream_body(port, 4 * MiB, chunked=True, content_type=content_type)  # warm up: imports, buffers, pools
    baseline = resident_bytes(process.pid)
    peaks = {}
    for size in (16 * MiB, 64 * MiB, 256 * MiB):
        for chunked in (False, True):
            answer, sent = stream_body(port, size, chunked=chunked, content_type=content_type)
            assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
            assert b"payload_too_large" in answer
            peaks[(size, chunked)] = resident_bytes(process.pid)
            if size >= 64 * MiB:
                assert sent < size, "the server read the whole body instead of stopping at the limit"
    growth = max(peaks.values()) - baseline
    # The largest body is 256 MiB; a server that buffered it would have grown by that much.
    assert growth < 24 * MiB, {k: (v - baseline) // 1024 for k, v in peaks.items()}
    assert process.poll() is None

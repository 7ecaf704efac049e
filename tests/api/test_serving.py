"""The API's event loop (api/serving.py): uvloop whose listening sockets accept every waiting connection at once."""
from __future__ import annotations

import asyncio
import errno
import socket
import time

import httpx
import pytest

from api import serving
from tests.live import serve

BURST = 20


class Recorder(asyncio.Protocol):
    """Counts the connections the server set up."""
    made: list[asyncio.Transport]

    def connection_made(self, transport):
        self.made.append(transport)


def recorder_factory(made: list) -> type[Recorder]:
    return type("BoundRecorder", (Recorder,), {"made": made})


async def iterations_until(condition, limit: int = 200) -> int:
    """Loop iterations (one `sleep(0)` each) until `condition()` holds."""
    for iteration in range(1, limit + 1):
        await asyncio.sleep(0)
        if condition():
            return iteration
    return limit + 1


def run(coroutine_function):
    loop = serving.new_event_loop()
    try:
        return loop.run_until_complete(coroutine_function())
    finally:
        loop.close()


def test_a_burst_of_waiting_connections_is_set_up_within_a_few_iterations():
    """Stock uvloop (libuv >= 1.45) accepts one connection per iteration: 20 waiting clients need 20 or more."""
    made: list = []

    async def scenario() -> int:
        server = await asyncio.get_running_loop().create_server(recorder_factory(made), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(BURST)]  # queued by the kernel
        try:
            return await iterations_until(lambda: len(made) == BURST)
        finally:
            server.close()
            for client in clients:
                client.close()

    assert run(scenario) <= 5
    assert len(made) == BURST


def test_a_closed_server_accepts_nothing_more():
    made: list = []

    async def scenario() -> None:
        server = await asyncio.get_running_loop().create_server(recorder_factory(made), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        assert server.is_serving()
        server.close()
        await server.wait_closed()
        assert not server.is_serving()
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=2)

    run(scenario)
    assert made == []


def test_binding_a_port_in_use_fails_with_the_address():
    taken = socket.create_server(("127.0.0.1", 0))
    port = taken.getsockname()[1]

    async def scenario() -> None:
        await asyncio.get_running_loop().create_server(Recorder, "127.0.0.1", port)

    try:
        with pytest.raises(OSError, match=f"127.0.0.1.*{port}.*address already in use"):
            run(scenario)
    finally:
        taken.close()


class OutOfDescriptors(socket.socket):
    """A listening socket whose accept() fails as a process out of file descriptors would, until told not to."""
    failing = True

    def accept(self):
        if self.failing:
            raise OSError(errno.EMFILE, "Too many open files")
        return super().accept()


def test_out_of_descriptors_pauses_accepting_then_resumes(monkeypatch, caplog):
    monkeypatch.setattr(serving, "ACCEPT_PAUSE_SECONDS", 0.2)
    made: list = []
    listener = OutOfDescriptors(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    async def scenario() -> None:
        server = await asyncio.get_running_loop().create_server(recorder_factory(made), sock=listener)
        client = socket.create_connection(("127.0.0.1", port))
        try:
            await asyncio.sleep(0.05)  # the failing accept was tried, then the socket left unwatched
            assert made == [] and "not accepting" in caplog.text
            listener.failing = False
            await asyncio.sleep(0.05)
            assert made == []  # still paused: a socket that stays readable is not retried in a busy loop
            deadline = time.monotonic() + 5
            while not made and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
        finally:
            server.close()
            client.close()

    run(scenario)
    assert len(made) == 1


def test_uvicorn_serves_http_on_it():
    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": scope["path"].encode()})

    async def many_clients(base_url: str) -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=base_url, limits=httpx.Limits(max_connections=BURST * 2)) as client:
            return await asyncio.gather(*(client.get(f"/path/{i}") for i in range(BURST * 2)))

    with serve(app) as base_url:
        responses = asyncio.run(many_clients(base_url))
        assert [r.status_code for r in responses] == [200] * (BURST * 2)
        assert [r.text for r in responses] == [f"/path/{i}" for i in range(BURST * 2)]
    with pytest.raises(httpx.ConnectError):  # closed with the server
        httpx.get(base_url, timeout=2)

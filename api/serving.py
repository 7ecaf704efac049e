"""The event loop the API runs on: uvloop, except that a listening socket accepts every waiting connection at once.

libuv, under uvloop, accepts one connection per event-loop iteration (since libuv 1.45, libuv/libuv#3696). Under
load an iteration runs the next step of every ready request, a few milliseconds, so a burst of new connections
(a client pool's first round) was accepted one per iteration: in bench/api_load.py the last clients of the first
round waited many iterations before their first byte was read, while the others were already polling (bench/RESULTS.md,
the API's submit path). Python's own loop
accepts up to the backlog at each wake-up; this loop does the same and keeps uvloop's faster transports.

uvicorn takes it by name: `uvicorn.run(..., loop=LOOP)`.

The HTTP protocol (`http_protocol(client_timeout)`, uvicorn's `http` setting) is uvicorn's httptools one with
deadlines on the client: uvicorn closes a kept-alive connection idle between requests (timeout_keep_alive), but
waits without end for a new connection's first request, for headers sent a byte at a time and for a body that
stalls, each holding a socket and a little memory.

`python -m api --workers N` (N > 1, `serve_processes`): each process binds a listening socket of its own to the
port with SO_REUSEPORT, once its app has started (warm-up included), and the kernel spreads new connections across
the sockets. Sharing one socket instead, a burst of connections went mostly to whichever process woke first (with
greedy accept), or needed stock uvloop's one accept per wake-up to spread. uvicorn's supervisor still runs the
processes (restarts a dead one, SIGHUP replaces them one by one, SIGTERM stops them all). The price: a process
that dies resets the connections still waiting in its own backlog (on a shared socket another process took them);
their clients never got an answer, so nothing they sent was accepted. Where SO_REUSEPORT or uvloop is missing, the
processes share one socket as uvicorn binds it.
"""
from __future__ import annotations

import asyncio
import errno
import functools
import logging
import socket
from collections.abc import Callable

import uvicorn
from uvicorn.config import STARTUP_FAILURE
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.supervisors import Multiprocess

try:
    import uvloop
except ImportError:  # not installed where it does not build (Windows): uvicorn then runs Python's own loop
    uvloop = None

log = logging.getLogger(__name__)

# uvicorn's `loop` setting: an import string of a loop factory (or, without uvloop, uvicorn's own choice)
LOOP = "api.serving:new_event_loop" if uvloop is not None else "auto"
# Out of file descriptors or memory: stop accepting for a moment rather than spin on a socket that stays readable
# (asyncio's own loop waits the same second).
ACCEPT_PAUSE_SECONDS = 1.0
_RESOURCE_ERRORS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


class GreedyAcceptServer:
    """Listening sockets whose readiness callback accepts every waiting connection (up to the backlog), each
    handed to uvloop as an accepted socket. Offers what uvicorn uses of asyncio.Server: `sockets`, `close`,
    `wait_closed`, `is_serving` (uvicorn drains the open connections itself)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sockets: list[socket.socket],
                 protocol_factory: Callable[[], asyncio.BaseProtocol], backlog: int):
        self._loop, self._sockets, self._protocol_factory, self._backlog = loop, sockets, protocol_factory, backlog
        self._handshakes: set[asyncio.Task] = set()  # the loop keeps only weak references to tasks
        self._serving = True
        for sock in sockets:
            sock.setblocking(False)
            sock.listen(backlog)
            self._watch(sock)

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        return tuple(self._sockets)

    def is_serving(self) -> bool:
        return self._serving

    def close(self) -> None:
        if not self._serving:
            return
        self._serving = False
        for sock in self._sockets:
            self._loop.remove_reader(sock.fileno())
            sock.close()

    async def wait_closed(self) -> None:
        return None

    def _watch(self, sock: socket.socket) -> None:
        if self._serving:
            self._loop.add_reader(sock.fileno(), self._accept_waiting, sock)

    def _accept_waiting(self, sock: socket.socket) -> None:
        for _ in range(self._backlog):
            try:
                connection, _address = sock.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return  # none waiting (or the client gave up first): the next wake-up says when there is
            except OSError as exc:
                if exc.errno not in _RESOURCE_ERRORS:
                    raise
                log.error("accept failed (%s); not accepting for %g s", exc, ACCEPT_PAUSE_SECONDS)
                self._loop.remove_reader(sock.fileno())
                self._loop.call_later(ACCEPT_PAUSE_SECONDS, self._watch, sock)
                return
            connection.setblocking(False)
            handshake = self._loop.create_task(self._loop.connect_accepted_socket(self._protocol_factory, connection))
            self._handshakes.add(handshake)
            handshake.add_done_callback(self._handshake_done)

    def _handshake_done(self, handshake: asyncio.Task) -> None:
        self._handshakes.discard(handshake)
        if not handshake.cancelled() and handshake.exception() is not None:
            # The client reset the connection before its transport was set up: nothing to serve.
            log.debug("an accepted connection could not be set up: %s", handshake.exception())


class GreedyAcceptLoop(uvloop.Loop if uvloop is not None else asyncio.SelectorEventLoop):
    """uvloop whose plain-TCP servers accept greedily; TLS and other options go to uvloop's own server."""

    reuse_port = False  # SO_REUSEPORT on the sockets it binds (serve_processes' loop)

    async def create_server(self, protocol_factory, host=None, port=None, *, sock=None, backlog=100, ssl=None,
                            **options):
        if ssl is not None or options:
            return await super().create_server(protocol_factory, host, port, sock=sock, backlog=backlog, ssl=ssl,
                                               **options)
        sockets = [sock] if sock is not None else await self._bind(host, port)
        return GreedyAcceptServer(self, sockets, protocol_factory, backlog)

    async def _bind(self, host: str | None, port: int | None) -> list[socket.socket]:
        """A listening socket for every address `host` names (all interfaces when it is empty), as asyncio binds."""
        addresses = await self.getaddrinfo(host or None, port or 0, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        sockets: list[socket.socket] = []
        try:
            for family, kind, proto, _name, address in dict.fromkeys(addresses):
                sock = socket.socket(family, kind, proto)
                sockets.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if self.reuse_port:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)  # the IPv4 address has its own
                try:
                    sock.bind(address)
                except OSError as exc:
                    raise OSError(exc.errno, f"error while attempting to bind on address {address!r}: "
                                             f"{exc.strerror.lower()}") from None
        except BaseException:
            for sock in sockets:
                sock.close()
            raise
        return sockets


class ReusePortLoop(GreedyAcceptLoop):
    """The loop of each `serve_processes` process: its sockets join the port's SO_REUSEPORT group."""

    reuse_port = True


def new_event_loop() -> asyncio.AbstractEventLoop:
    return GreedyAcceptLoop()


def new_reuse_port_event_loop() -> asyncio.AbstractEventLoop:
    return ReusePortLoop()


REUSE_PORT_LOOP = "api.serving:new_reuse_port_event_loop"
CAN_REUSE_PORT = uvloop is not None and hasattr(socket, "SO_REUSEPORT")


# A request's target and header lines together may hold this much (httptools, unlike h11, sets no bound: within the
# deadline a client could send headers without end); past it uvicorn answers 400 and closes, as for any request it
# cannot parse. nginx's default allows 4 header lines of 8 KiB each.
MAX_HEADER_BYTES = 64 * 1024


class HeadersTooLarge(Exception):
    pass


REQUEST_TIMEOUT = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
                   b"content-length: 16\r\nconnection: close\r\n\r\nrequest timeout\n")


class ClientDeadlineProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, with a deadline on the client: a request's headers must all arrive within
    `client_timeout` seconds of the connection's opening (its first request) or of the request's first byte (later
    ones; uvicorn's keep-alive timeout covers the wait before it), and its body may not pause longer than that
    between two reads. Past it the connection is answered 408 (unless an answer has begun) and closed; a route
    waiting for the body sees the client gone. While the server itself has stopped reading (the route is not
    reading its body yet), the deadline waits. A request's target and headers may hold MAX_HEADER_BYTES."""

    def __init__(self, *args, client_timeout: float, **kwargs):
        super().__init__(*args, **kwargs)
        self.client_timeout = client_timeout
        self.client_deadline: asyncio.TimerHandle | None = None
        self.reading_headers = True  # from the connection's opening, or a request's first byte, to its headers' end
        self.header_bytes = 0

    def _arm(self) -> None:
        self._disarm()
        self.client_deadline = self.loop.call_later(self.client_timeout, self._client_timed_out)

    def _disarm(self) -> None:
        if self.client_deadline is not None:
            self.client_deadline.cancel()
            self.client_deadline = None

    def connection_made(self, transport: asyncio.Transport) -> None:
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.reading_headers = True
        self.header_bytes = 0
        if self.client_deadline is None:  # a later request's first byte; the first request's runs from the connection
            self._arm()

    def on_url(self, url: bytes) -> None:
        self._count_header_bytes(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_header_bytes(len(name) + len(value))
        super().on_header(name, value)

    def _count_header_bytes(self, count: int) -> None:
        self.header_bytes += count
        if self.header_bytes > MAX_HEADER_BYTES:
            # raised inside the parser, it ends the parse as an invalid request (uvicorn: 400, close)
            raise HeadersTooLarge()

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        self.reading_headers = False
        self._arm()  # now the body's (on_message_complete follows at once when there is none)

    def on_body(self, body: bytes) -> None:
        super().on_body(body)
        self._arm()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._disarm()

    def _client_timed_out(self) -> None:
        self.client_deadline = None
        if self.transport.is_closing():
            return
        if self.flow.read_paused:  # the server is not reading: not the client's delay
            self._arm()
            return
        if self.reading_headers:
            log.debug("closing a connection from %s: no request within %g s", self.client, self.client_timeout)
            self.transport.write(REQUEST_TIMEOUT)
        elif not self.cycle.response_started:
            # the route waiting for the body sees the client gone (and logs it); nothing it sends goes out
            self.cycle.disconnected = True
            self.cycle.message_event.set()
            self.transport.write(REQUEST_TIMEOUT)
        # else an answer has begun (or ended, the rest of its body still trickling in): it is cut off as it is
        self.transport.close()


def http_protocol(client_timeout: float) -> Callable[..., asyncio.Protocol]:
    """uvicorn's `http` setting: its httptools protocol with a deadline on the client (ClientDeadlineProtocol)."""
    return functools.partial(ClientDeadlineProtocol, client_timeout=client_timeout)


def serve_processes(app: str, *, workers: int, **options) -> int:
    """Run `app` (an import string) in `workers` processes under uvicorn's supervisor, each listening on a socket
    of its own (SO_REUSEPORT, bound after its app has started); one shared socket where that is not available.
    Returns the exit status: uvicorn's start-up failure code when a process could not start (a port in use)."""
    if not CAN_REUSE_PORT:
        uvicorn.run(app, workers=workers, loop="auto", **options)  # exits with that code itself
        return 0
    config = uvicorn.Config(app, workers=workers, loop=REUSE_PORT_LOOP, **options)
    supervisor = Multiprocess(config, sockets=None)
    try:
        # No sockets: each process's server binds host:port itself, after its lifespan start-up (uvicorn's
        # standard case), so connections only reach processes that are ready. A process that cannot bind exits
        # with the start-up failure code, and the supervisor then stops the others.
        supervisor.run()
    except KeyboardInterrupt:
        pass
    return STARTUP_FAILURE if any(p.exitcode == STARTUP_FAILURE for p in supervisor.processes) else 0

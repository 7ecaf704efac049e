"""A TCP proxy in front of the API that loses answers: the request reaches the API, which acts on it and answers,
and the client's connection is closed instead of getting the answer (a network cut at the worst moment)."""
from __future__ import annotations

import re
import socket
import threading
from typing import Callable

REQUEST_HEAD = re.compile(rb"(?s)([A-Z]+) (\S+) HTTP/1\.1\r\n(.*?)\r\n\r\n")


class AnswerCuttingProxy:
    """Forwards every connection to 127.0.0.1:`upstream_port`. A request for which `cut(method, path)` is true
    (while `cuts` remain) is forwarded whole; the first bytes of its answer close the client's connection
    instead of reaching it. `requests` lists every request seen: (method, path, headers with lower-case names)."""

    def __init__(self, upstream_url: str, cut: Callable[[str, str], bool], cuts: int = 1):
        self.upstream_port = int(upstream_url.rsplit(":", 1)[1])
        self.cut, self.cuts = cut, cuts
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.cut_requests: list[tuple[str, str, dict[str, str]]] = []
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._threads: list[threading.Thread] = []
        self._closed = False

    def __enter__(self) -> AnswerCuttingProxy:
        self._start(self._accept)
        return self

    def __exit__(self, *exc) -> None:
        self._closed = True
        self._listener.close()

    def _start(self, target, *args) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            doomed = threading.Event()  # set when the request on its way up is one whose answer is to be lost
            self._start(self._up, client, upstream, doomed)
            self._start(self._down, upstream, client, doomed)

    def _up(self, client: socket.socket, upstream: socket.socket, doomed: threading.Event) -> None:
        buffer, scanned = b"", 0
        while data := _recv(client):
            buffer += data
            while match := REQUEST_HEAD.search(buffer, scanned):
                scanned = match.end()
                method, path = match[1].decode(), match[2].decode()
                headers = dict(line.split(": ", 1) for line in match[3].decode("latin-1").split("\r\n"))
                request = (method, path, {name.lower(): value for name, value in headers.items()})
                with self._lock:
                    self.requests.append(request)
                    if self.cuts > 0 and self.cut(method, path):
                        self.cuts -= 1
                        self.cut_requests.append(request)
                        doomed.set()  # before the request goes on, so its answer cannot slip through
            try:
                upstream.sendall(data)
            except OSError:
                break
        _close(upstream)

    def _down(self, upstream: socket.socket, client: socket.socket, doomed: threading.Event) -> None:
        while data := _recv(upstream):
            if doomed.is_set():
                break  # the API answered (so it acted on the request); the client never hears it
            try:
                client.sendall(data)
            except OSError:
                break
        _close(client)
        _close(upstream)


def _recv(sock: socket.socket) -> bytes:
    try:
        return sock.recv(65536)
    except OSError:
        return b""


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()

"""Webhook receivers that misbehave on purpose: hang, answer 500, redirect, or fail the first N attempts.

Every request is recorded with its headers, body and whether its Standard Webhooks signature verifies.
"""
from __future__ import annotations

import json
import threading
import time
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tests.e2e.helpers import WEBHOOK_SECRET, secret_key_bytes_of
from jobs.webhooks import verify

BEHAVIOURS = ("ok", "hang", "error", "redirect")


class Receiver:
    def __init__(self, behaviour: str = "ok", *, fail_first: int = 0, hang_seconds: float = 5.0):
        assert behaviour in BEHAVIOURS
        self.behaviour, self.fail_first, self.hang_seconds = behaviour, fail_first, hang_seconds
        self.received: list[dict] = []
        self.attempts_by_id: dict[str, int] = defaultdict(int)
        self.hanging = 0  # requests being held open right now
        self._lock = threading.Lock()
        self._closing = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                headers = {k.lower(): v for k, v in self.headers.items()}
                with receiver._lock:
                    message_id = headers.get("webhook-id", "")
                    receiver.attempts_by_id[message_id] += 1
                    attempt = receiver.attempts_by_id[message_id]
                    receiver.received.append({
                        "headers": headers, "body": json.loads(body), "attempt": attempt, "at": time.time(),
                        "verified": verify(secret_key_bytes_of(WEBHOOK_SECRET), headers, body)})
                if receiver.behaviour == "hang":
                    with receiver._lock:
                        receiver.hanging += 1
                    receiver._closing.wait(receiver.hang_seconds)
                    with receiver._lock:
                        receiver.hanging -= 1
                    return  # no answer at all: the sender times out
                if receiver.behaviour == "redirect":
                    self.send_response(307)
                    self.send_header("Location", "http://127.0.0.1:9/elsewhere")
                elif receiver.behaviour == "error" or attempt <= receiver.fail_first:
                    self.send_response(500)
                else:
                    self.send_response(204)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._closing.set()
        self.server.shutdown()
        self.server.server_close()

    def events(self, event_type: str | None = None, job_id: str | None = None) -> list[dict]:
        with self._lock:
            return [r for r in self.received if (event_type is None or r["body"]["type"] == event_type)
                    and (job_id is None or r["body"]["data"]["id"] == job_id)]

    def terminal_ids(self, job_id: str) -> set[tuple[str, str]]:
        """(event type, webhook-id) of every terminal event received for the job."""
        return {(r["body"]["type"], r["headers"]["webhook-id"]) for r in self.events(job_id=job_id)
                if r["body"]["type"] != "job.started"}

"""Helpers for the service tests: images, polling, and a webhook receiver that verifies signatures."""
from __future__ import annotations

import base64
import io
import json
import threading
import time
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import skimage.data
from PIL import Image
from pydantic import SecretStr

from jobs.settings import secret_key_bytes
from jobs.webhooks import verify

WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"service-tests-webhook-key-0123456789").decode()
# Small ZSSR budgets per preset: "fast" finishes in seconds on a CPU; "paper" trains long enough to be canceled.
# kernel=estimate: "fast" runs KernelGAN (briefly), "balanced" the default estimator (the learnt prior at x2).
# fast/balanced: 1000 steps on crops of 32, about 2 s of training in a warm worker, so polls and the demo page
# (whose event stream reads the job every 0.2 s) see several progress points; shorter runs could end between two.
TINY_ZSSR_OVERRIDES = json.dumps({
    "fast": {"max_iters": 1000, "min_iters": 1000, "crop_size": 32, "width": 16, "depth": 4, "run_test_every": 10,
             "back_projection_iters": [2], "output_flip": False, "kernel_estimation_iters": 10,
             "kernel_estimator": "kernelgan"},
    "balanced": {"max_iters": 1000, "min_iters": 1000, "crop_size": 32, "width": 16, "depth": 4, "run_test_every": 10,
                 "back_projection_iters": [2], "output_flip": False, "kernel_estimation_iters": 10},
    "paper": {"max_iters": 100000, "min_iters": 100000, "crop_size": 32, "width": 16, "depth": 4},
})
TERMINAL = ("succeeded", "failed", "canceled")


def png_bytes(width: int = 40, height: int = 30, mode: str = "RGB") -> bytes:
    image = Image.new(mode, (width, height))
    image.putdata([((x * 7 + y * 3) % 256, (x * 5) % 256, (y * 11) % 256)[:len(mode)] if len(mode) > 1
                   else (x * 7 + y * 3) % 256 for y in range(height) for x in range(width)])
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


# A region of the same photo with about 1.7 levels of noise (sr.degradations.estimate_noise_std), under the limit
# above which kernel="estimate" keeps the bicubic assumption without estimating (sr.blind, x2): the default
# region's helmet and flag measure 4.0.
QUIET_PHOTO_REGION = (350, 150, 414, 198)


def photo_bytes(box: tuple[int, int, int, int] = (180, 60, 244, 108)) -> bytes:
    """A crop of a real photo (scikit-image's bundled astronaut), small enough for a tiny ZSSR run on the CPU."""
    crop = Image.fromarray(skimage.data.astronaut()).crop(box)
    buffer = io.BytesIO()
    crop.save(buffer, "PNG")
    return buffer.getvalue()


def submit(client, image: bytes, **fields) -> dict:
    response = client.post("/v1/jobs", files={"image": ("image.png", image, "image/png")},
                           data={k: str(v) for k, v in fields.items()})
    assert response.status_code == 202, response.text
    return response.json()


def wait_for(client, job_id: str, statuses=TERMINAL, timeout: float = 30.0, on_poll=None) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        response = client.get(f"/v1/jobs/{job_id}")
        assert response.status_code == 200, response.text
        job = response.json()
        if on_poll is not None:
            on_poll(job)
        if job["status"] in statuses:
            return job
        assert time.monotonic() < deadline, f"job stayed {job['status']}: {job}"
        time.sleep(0.05)


class WebhookReceiver:
    """A local HTTP receiver. It verifies every signature, can fail the first N attempts of each message id
    with 500, or answer every request with a redirect."""

    def __init__(self, *, fail_first: int = 0, redirect: bool = False):
        self.fail_first, self.redirect = fail_first, redirect
        self.received: list[dict] = []
        self.attempts_by_id: dict[str, int] = defaultdict(int)
        self._lock = threading.Lock()
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
                        "headers": headers, "body": json.loads(body), "raw": body, "attempt": attempt,
                        "verified": verify(secret_key_bytes_of(WEBHOOK_SECRET), headers, body)})
                if receiver.redirect:
                    self.send_response(302)
                    self.send_header("Location", "http://127.0.0.1:9/elsewhere")
                elif attempt <= receiver.fail_first:
                    self.send_response(500)
                else:
                    self.send_response(204)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> WebhookReceiver:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def events(self, event_type: str) -> list[dict]:
        with self._lock:
            return [r for r in self.received if r["body"]["type"] == event_type]

    def wait_for(self, predicate, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            assert time.monotonic() < deadline, f"webhooks received so far: {[r['body']['type'] for r in self.received]}"
            time.sleep(0.05)


def secret_key_bytes_of(secret: str) -> bytes:
    return secret_key_bytes(SecretStr(secret))

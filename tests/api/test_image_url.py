"""image_url submissions: the API fetches the image from a real HTTP server in this test (on 127.0.0.1, allowed by
the services' UPSCALER_WEBHOOK_ALLOW_PRIVATE=true), under the webhook targets' rules, a byte limit and a deadline."""
from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.e2e.helpers import photo_bytes, png_bytes, wait_for

PHOTO = photo_bytes()


class ImageHost(BaseHTTPRequestHandler):
    """/photo.png, /slow (answers after 5 s), /huge (an endless chunked body), /text, /to-metadata and /to-photo
    (redirects); every request is counted by path."""
    seen: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        ImageHost.seen.append(self.path)
        if self.path == "/photo.png":
            self._send(200, PHOTO, "image/png")
        elif self.path == "/slow":
            time.sleep(5)
            self._send(200, PHOTO, "image/png")
        elif self.path == "/huge":
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            try:
                for _ in range(1000):
                    chunk = b"\x89PNG" + b"\0" * 4092
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            except OSError:
                pass  # the API hung up once it had enough: the point of the test
        elif self.path == "/text":
            self._send(200, b"hello, not an image", "text/plain")
        elif self.path == "/to-metadata":
            self._redirect("http://169.254.169.254/latest/meta-data/")
        elif self.path == "/to-photo":
            self._redirect("/photo.png")
        else:
            self._send(404, b"no", "text/plain")

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _redirect(self, location: str) -> None:
        self.send_response(302)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def image_host():
    server = ThreadingHTTPServer(("127.0.0.1", 0), ImageHost)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def submit_url(client, url: str, **fields):
    return client.post("/v1/jobs", json={"image_url": url, "method": "bicubic", **fields})


def error_code(response) -> str:
    return response.json()["error"]["code"]


def test_an_image_url_is_fetched_and_upscaled(client, image_host):
    response = submit_url(client, image_host + "/photo.png", scale=2)
    assert response.status_code == 202, response.text
    assert response.json()["input"]["bytes"] == len(PHOTO)
    done = wait_for(client, response.json()["id"])
    assert done["status"] == "succeeded" and done["output"]["width"] == 128


def test_image_url_as_a_multipart_field_and_through_a_redirect(client, image_host):
    response = client.post("/v1/jobs", files={"image_url": (None, image_host + "/to-photo"), "method": (None, "bicubic")})
    assert response.status_code == 202, response.text
    assert wait_for(client, response.json()["id"])["status"] == "succeeded"


def test_an_image_and_an_image_url_together_are_refused(client, image_host):
    response = client.post("/v1/jobs", files={"image": ("a.png", png_bytes(), "image/png")},
                           data={"image_url": image_host + "/photo.png"})
    assert response.status_code == 422 and error_code(response) == "missing_image"


def test_a_slow_server_times_out(make_client, image_host):
    client = make_client(image_url_timeout_seconds=1)
    started = time.monotonic()
    response = submit_url(client, image_host + "/slow")
    assert response.status_code == 422 and error_code(response) == "image_url_unreachable"
    assert "longer than 1 s" in response.json()["error"]["message"]
    assert time.monotonic() - started < 4


def test_an_oversized_image_is_cut_off_at_the_limit(make_client, image_host):
    client = make_client(max_upload_bytes=64 * 1024)
    response = submit_url(client, image_host + "/huge")
    assert response.status_code == 413 and error_code(response) == "payload_too_large"


def test_a_url_that_is_not_an_image_is_415(client, image_host):
    response = submit_url(client, image_host + "/text")
    assert response.status_code == 415


def test_a_missing_image_is_unreachable(client, image_host):
    response = submit_url(client, image_host + "/nothing-here")
    assert response.status_code == 422 and error_code(response) == "image_url_unreachable"


def test_a_redirect_to_the_metadata_address_is_refused_without_connecting(client, image_host):
    response = submit_url(client, image_host + "/to-metadata")
    assert response.status_code == 422 and error_code(response) == "image_url_refused"
    assert "169.254.169.254" in response.json()["error"]["message"]


def test_a_private_target_is_refused_unless_allowed(make_client, image_host):
    client = make_client(webhook_allow_private=False)
    before = len(ImageHost.seen)
    response = submit_url(client, image_host + "/photo.png")
    assert response.status_code == 422 and error_code(response) == "image_url_refused"
    assert "UPSCALER_WEBHOOK_ALLOW_PRIVATE" in response.json()["error"]["message"]
    assert len(ImageHost.seen) == before  # refused before any connection


@pytest.mark.parametrize("url", ["ftp://example.com/a.png", "http://user:pw@example.com/a.png", "not a url"])
def test_a_url_of_another_kind_is_refused(client, url):
    response = submit_url(client, url)
    assert response.status_code == 422 and error_code(response) == "image_url_refused"


def test_a_retry_while_a_keyed_fetch_is_under_way_is_409_then_replays(client, image_host):
    headers, body = {"Idempotency-Key": "slow-fetch-" + str(time.time())}, {"image_url": image_host + "/slow",
                                                                             "method": "bicubic"}
    first: list = []
    thread = threading.Thread(target=lambda: first.append(client.post("/v1/jobs", json=body, headers=headers)))
    thread.start()
    time.sleep(1.0)  # the first request holds the key while its image arrives (5 s)
    retry = client.post("/v1/jobs", json=body, headers=headers)
    assert retry.status_code == 409 and error_code(retry) == "idempotency_key_in_use"
    assert retry.headers["retry-after"] == "1"
    thread.join()
    assert first[0].status_code == 202, first[0].text
    again = client.post("/v1/jobs", json=body, headers=headers)
    assert again.headers["idempotent-replayed"] == "true" and again.json()["id"] == first[0].json()["id"]

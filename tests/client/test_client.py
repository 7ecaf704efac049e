"""The client against the real stack (Redis, `python -m worker`, the API on a socket): every operation, sync and
async, the event stream and its polling fallback, and the API's errors as ApiError."""
from __future__ import annotations

import asyncio
import io
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image

from tests.client.proxy import AnswerCuttingProxy
from tests.e2e.helpers import photo_bytes, png_bytes
from zssr_client import ApiError, AsyncClient, Client, JobFailed, WaitTimeout


def size_of(data: bytes) -> tuple[int, int]:
    return Image.open(io.BytesIO(data)).size


@pytest.mark.slow
@pytest.mark.timeout(900)  # a ZSSR run of 1000 steps in a worker at nice 19: minutes on a busy machine
def test_upscale_end_to_end(api_url, api_key, caplog):
    seen = []
    with caplog.at_level(logging.INFO, logger="zssr_client"), Client(api_url, api_key=api_key) as client:
        data = client.upscale(photo_bytes(), scale=2, preset="fast", seed=1, progress=seen.append, timeout=None)
        (job,) = client.list()
    assert size_of(data) == (128, 96)  # the 64x48 crop, twice its size
    assert job["status"] == "succeeded" and job["params"]["preset"] == "fast" and job["params"]["seed"] == 1
    assert seen[-1]["status"] == "succeeded" and seen[-1]["fraction"] == 1.0
    assert not [r for r in caplog.records if "polling" in r.getMessage()]  # the event stream carried it to the end


def test_async_client_end_to_end(api_url, api_key):
    async def run() -> tuple[bytes, dict, list, dict]:
        async with AsyncClient(api_url, api_key=api_key) as client:
            data = await client.upscale(png_bytes(40, 30), scale=3, method="bicubic", output_format="webp")
            job = (await client.list(status="succeeded", limit=5))[0]
            waited = await client.wait(job["id"], timeout=30)
            submitted = await client.submit(png_bytes(), preset="paper")
            canceled = await client.cancel(submitted["id"])
            ended = await client.wait(canceled["id"], timeout=60)  # a running job ends canceled between two steps
            return data, waited, await client.list(), ended

    data, waited, jobs, canceled = asyncio.run(run())
    assert Image.open(io.BytesIO(data)).format == "WEBP" and size_of(data) == (120, 90)
    assert waited["status"] == "succeeded" and waited["output"]["content_type"] == "image/webp"
    assert [j["status"] for j in jobs] == ["canceled", "succeeded"]
    assert canceled["status"] == "canceled"


def test_submit_takes_a_path_bytes_a_file_object_or_a_pil_image(api_url, api_key, tmp_path):
    path = tmp_path / "in.png"
    path.write_bytes(png_bytes(40, 30))
    with Client(api_url, api_key=api_key) as client, path.open("rb") as file:
        jobs = [client.submit(image, method="bicubic") for image in
                (path, str(path), path.read_bytes(), file, Image.new("LA", (33, 22)))]
        finished = [client.wait(job["id"], timeout=30) for job in jobs]
        outputs = [size_of(client.result(job["id"])) for job in jobs]
        with pytest.raises(ValueError):
            client.submit()
        with pytest.raises(TypeError):
            client.submit(12345)
    assert [job["status"] for job in finished] == ["succeeded"] * 5
    assert [job["input"]["mode"] for job in finished][-1] == "LA"
    assert outputs == [(80, 60)] * 4 + [(66, 44)]


def test_wait_polls_when_the_event_stream_fails(api_url, api_key, caplog):
    with AnswerCuttingProxy(api_url, lambda method, path: path.endswith("/events")) as proxy, \
            caplog.at_level(logging.INFO, logger="zssr_client"), Client(proxy.url, api_key=api_key) as client:
        seen = []
        data = client.upscale(png_bytes(40, 30), method="bicubic", progress=seen.append)
    assert size_of(data) == (80, 60)
    assert [path for _, path, _ in proxy.cut_requests] == [f"/v1/jobs/{client_job_id(proxy)}/events"]
    assert [r for r in caplog.records if "polling" in r.getMessage()]
    polls = [path for method, path, _ in proxy.requests if method == "GET" and path.count("/") == 3]
    assert polls and seen[-1]["status"] == "succeeded"


def client_job_id(proxy: AnswerCuttingProxy) -> str:
    return next(path.split("/")[3] for method, path, _ in proxy.requests if path.endswith("/events"))


def test_wait_gives_up_at_its_timeout(api_url, api_key):
    with Client(api_url, api_key=api_key) as client:
        job = client.submit(png_bytes(), preset="paper")
        try:
            with pytest.raises(WaitTimeout) as raised:
                client.wait(job["id"], timeout=1.5)
            assert raised.value.job["id"] == job["id"] and raised.value.job["status"] in ("queued", "running")
        finally:
            client.cancel(job["id"])


def test_api_errors_raise_api_error_with_the_api_code(api_url, api_key):
    with Client(api_url, api_key=api_key) as client:
        cases = {
            (404, "job_not_found"): lambda: client.get("0" * 32),
            (415, "unsupported_image"): lambda: client.submit(b"this is not an image"),
            (422, "invalid_parameters"): lambda: client.submit(png_bytes(), scale=9),
        }
        for (status, code), call in cases.items():
            with pytest.raises(ApiError) as raised:
                call()
            assert (raised.value.status, raised.value.code) == (status, code), raised.value
            assert raised.value.message and str(raised.value).startswith(f"{status} {code}: ")
        running = client.submit(png_bytes(), preset="paper")
        with pytest.raises(ApiError) as unfinished:
            client.result(running["id"])
        client.cancel(running["id"])
        assert (unfinished.value.status, unfinished.value.code) == (409, "job_not_finished")
    with Client(api_url, api_key="not-a-key") as stranger, pytest.raises(ApiError) as refused:
        stranger.list()
    assert (refused.value.status, refused.value.code) == (401, "unauthorized")
    assert "valid API key" in refused.value.message


def test_training_progress_comes_from_the_event_stream_and_a_canceled_job_raises_job_failed(api_url, api_key, caplog):
    seen = []
    with caplog.at_level(logging.INFO, logger="zssr_client"), Client(api_url, api_key=api_key) as client, \
            Client(api_url, api_key=api_key) as other:

        def cancel_after_some_steps(progress: dict) -> None:
            seen.append(progress)
            if progress.get("step", 0) >= 3 and progress["status"] == "running":
                other.cancel(other.list(status="running")[0]["id"])

        with pytest.raises(JobFailed) as raised:
            client.upscale(png_bytes(), preset="paper", progress=cancel_after_some_steps)
    assert raised.value.job["status"] == "canceled" and raised.value.status == 409
    assert raised.value.code == ((raised.value.job["error"] or {}).get("code") or "job_canceled")
    training = [p for p in seen if p["status"] == "running" and p.get("step")]
    assert training and training[-1]["phase"] == "training" and training[-1]["total_steps"] == 100000
    assert [p["step"] for p in training] == sorted({p["step"] for p in training})  # each change once, in order
    assert seen[-1]["status"] == "canceled"
    assert not [r for r in caplog.records if "polling" in r.getMessage()]


class ImageServer:
    """Serves one photo over HTTP on 127.0.0.1, for submissions by URL."""

    def __init__(self, body: bytes):
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's naming
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/photo.png"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_submit_by_image_url(api_url, api_key):
    server = ImageServer(png_bytes(40, 30))  # the stack allows private targets (UPSCALER_WEBHOOK_ALLOW_PRIVATE)
    try:
        with Client(api_url, api_key=api_key) as client:
            data = client.upscale(image_url=server.url, method="bicubic")
    finally:
        server.close()
    assert size_of(data) == (80, 60)

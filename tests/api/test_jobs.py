"""The job API end to end: the API in-process, a real worker process, a real redis-server."""
from __future__ import annotations

import base64
import io
import math
import time

import pytest
from PIL import Image

from api.schemas import JobPublic
from tests.e2e.helpers import WebhookReceiver, png_bytes, submit, wait_for
from jobs.queue import run_job_message
from jobs.record import new_job_fields, new_job_id


def test_bicubic_job_runs_on_the_light_queue_and_returns_a_png_of_the_right_size(client, store):
    response = client.post("/v1/jobs", files={"image": ("in.png", png_bytes(40, 30), "image/png")},
                           data={"scale": "2.5", "method": "bicubic"})
    assert response.status_code == 202
    job = response.json()
    assert response.headers["location"] == f"/v1/jobs/{job['id']}" == job["urls"]["self"]
    assert job["status"] == "queued" and job["input"] == {"width": 40, "height": 30, "mode": "RGB",
                                                          "bytes": job["input"]["bytes"], "format": "PNG"}
    polled = client.get(f"/v1/jobs/{job['id']}")
    if polled.json()["status"] not in ("succeeded", "failed"):
        assert polled.headers["retry-after"] == "1"
    done = wait_for(client, job["id"])
    assert done["status"] == "succeeded", done
    assert "retry-after" not in client.get(f"/v1/jobs/{job['id']}").headers
    assert done["output"]["width"] == 100 and done["output"]["height"] == 75 and done["progress"]["fraction"] == 1.0
    assert done["metrics"]["queue_seconds"] >= 0 and done["metrics"]["run_seconds"] >= 0
    result = client.get(f"/v1/jobs/{job['id']}/result")
    assert result.status_code == 200 and result.headers["content-type"] == "image/png"
    with Image.open(io.BytesIO(result.content)) as image:
        assert image.format == "PNG" and image.size == (100, 75)
    record = store.fields(job["id"])
    assert record["queue"] == "light" and record["worker"].startswith("light-")
    JobPublic.model_validate(done)  # the documented schema is the one served


def test_base64_in_and_out(client):
    payload = {"image_base64": base64.b64encode(png_bytes(16, 12)).decode(), "scale": 2, "method": "bicubic",
               "output_format": "webp"}
    response = client.post("/v1/jobs", json=payload)
    assert response.status_code == 202, response.text
    done = wait_for(client, response.json()["id"])
    assert done["status"] == "succeeded" and done["output"]["content_type"] == "image/webp"
    result = client.get(f"/v1/jobs/{done['id']}/result", params={"encoding": "base64"})
    assert result.status_code == 200 and result.json()["content_type"] == "image/webp"
    with Image.open(io.BytesIO(base64.b64decode(result.json()["image_base64"]))) as image:
        assert image.format == "WEBP" and image.size == (32, 24)


def test_unknown_ids_are_404_with_the_error_shape(client):
    for path in (f"/v1/jobs/{new_job_id()}", f"/v1/jobs/{new_job_id()}/result", "/v1/jobs/not-an-id"):
        response = client.get(path)
        assert response.status_code == 404 and response.json()["error"]["code"] == "job_not_found"
    assert client.post(f"/v1/jobs/{new_job_id()}/cancel").status_code == 404
    assert client.get("/v2/nothing").json() == {"error": {"code": "not_found", "message": "Not Found"}}
    assert client.delete("/v1/jobs").json()["error"]["code"] == "method_not_allowed"


def _queued_job_without_a_message(store, owner: str = "open") -> str:
    """A job that stays queued: recorded like the API does, but never handed to a worker."""
    job_id = new_job_id()
    store.create(new_job_fields(job_id, owner, params={"scale": 2.0, "method": "bicubic", "preset": "fast",
                                                       "kernel": "bicubic", "output_format": "png", "seed": None},
                                input_info={"width": 40, "height": 30, "mode": "RGB", "bytes": 1},
                                output_info={"width": 80, "height": 60, "content_type": "image/png", "bytes": 0},
                                queue="light", webhook_url=None, ttl=600, now=time.time()), png_bytes(40, 30))
    return job_id


def test_result_before_the_job_finished_is_409(client, store):
    job_id = _queued_job_without_a_message(store)
    response = client.get(f"/v1/jobs/{job_id}/result")
    assert response.status_code == 409 and response.json()["error"]["code"] == "job_not_finished"
    assert response.headers["retry-after"] == "1"


def test_a_canceled_queued_job_never_starts_even_when_its_message_arrives(client, store):
    job_id = _queued_job_without_a_message(store)
    response = client.post(f"/v1/jobs/{job_id}/cancel")
    assert response.status_code == 202 and response.json()["status"] == "canceled"
    store.redis.lpush(*run_job_message(job_id, "light"))
    time.sleep(1.0)  # the light worker takes the message at once; it must decline to run it
    record = store.fields(job_id)
    assert record["status"] == "canceled" and record["runs"] == "0" and "started_at" not in record
    again = client.post(f"/v1/jobs/{job_id}/cancel")
    assert again.status_code == 409 and again.json()["error"]["code"] == "job_finished"
    assert client.get(f"/v1/jobs/{job_id}/result").json()["error"]["code"] == "job_not_succeeded"


def test_cancel_of_a_finished_job_is_409(client):
    done = wait_for(client, submit(client, png_bytes(), method="bicubic")["id"])
    response = client.post(f"/v1/jobs/{done['id']}/cancel")
    assert response.status_code == 409 and response.json()["error"]["code"] == "job_finished"


def test_an_expired_job_is_410(make_client):
    client = make_client(job_ttl_seconds=1)
    done = wait_for(client, submit(client, png_bytes(), method="bicubic")["id"])
    assert done["status"] == "succeeded"
    time.sleep(1.5)
    for path in (f"/v1/jobs/{done['id']}", f"/v1/jobs/{done['id']}/result"):
        response = client.get(path)
        assert response.status_code == 410 and response.json()["error"]["code"] == "job_expired"


@pytest.mark.parametrize("fields, code", [
    ({"scale": "0"}, "invalid_parameters"), ({"scale": "-1"}, "invalid_parameters"),
    ({"scale": "NaN"}, "invalid_parameters"), ({"scale": "8.5"}, "invalid_parameters"),
    ({"scale": "1"}, "invalid_parameters"), ({"scale": "abc"}, "invalid_parameters"),
    ({"method": "magic"}, "invalid_parameters"), ({"preset": "ultra"}, "invalid_parameters"),
    ({"output_format": "gif"}, "invalid_parameters"), ({"seed": "-3"}, "invalid_parameters"),
    ({"unknown_field": "1"}, "invalid_parameters"), ({"denoise": "strong"}, "invalid_parameters"),
])
def test_invalid_parameters_are_422(client, fields, code):
    response = client.post("/v1/jobs", files={"image": ("in.png", png_bytes(), "image/png")}, data=fields)
    assert response.status_code == 422 and response.json()["error"]["code"] == code, response.text


@pytest.mark.parametrize("scale", ["3", "2.5", "8", "1.5"])
def test_kernel_estimation_at_a_scale_other_than_2_or_4_is_422_at_submission(client, store, scale):
    response = client.post("/v1/jobs", files={"image": ("in.png", png_bytes(), "image/png")},
                           data={"method": "zssr", "kernel": "estimate", "scale": scale})
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_parameters"
    assert error["message"].startswith("kernel: ") and "scale 2 or 4" in error["message"], error


def test_kernel_estimation_on_an_image_or_region_under_40_pixels_is_422_at_submission(client):
    for image, fields, size in ((png_bytes(64, 39), {}, "64x39"), (png_bytes(64, 64), {"crop": "0,0,39,50"}, "39x50")):
        response = client.post("/v1/jobs", files={"image": ("in.png", image, "image/png")},
                               data={"method": "zssr", "kernel": "estimate", "scale": "2", **fields})
        assert response.status_code == 422, response.text
        error = response.json()["error"]
        assert error["code"] == "invalid_parameters", error
        assert error["message"].startswith("kernel: ") and f"at least 40 pixels a side, got {size}" in error["message"]
    assert _create_without_running(client, method="zssr", kernel="bicubic", scale="2")["status"] == "queued"


def test_kernel_estimation_is_accepted_at_x2_and_x4_and_ignored_by_bicubic(client):
    for scale in ("2", "4.0"):
        job = _create_without_running(client, method="zssr", kernel="estimate", scale=scale, image=png_bytes(48, 40))
        assert job["params"]["kernel"] == "estimate" and job["kernel"] is None  # null until a run estimated it
    done = wait_for(client, submit(client, png_bytes(), method="bicubic", kernel="estimate", scale=3)["id"])
    assert done["status"] == "succeeded" and done["kernel"] is None


def test_denoise_is_off_unless_asked_and_kept_in_the_params(client):
    plain = submit(client, png_bytes(), method="bicubic")
    assert plain["params"] == {"scale": 2.0, "method": "bicubic", "preset": "balanced", "kernel": "bicubic",
                               "denoise": "off", "output_format": "png", "seed": None, "crop": None}
    job = _create_without_running(client, method="zssr", denoise="auto")
    assert job["params"]["denoise"] == "auto"
    wait_for(client, plain["id"])


def _create_without_running(client, image: bytes | None = None, **fields) -> dict:
    """Submit a ZSSR job and cancel it at once: the test is about what the submission accepts, not the run."""
    job = submit(client, image or png_bytes(), **fields)
    client.post(f"/v1/jobs/{job['id']}/cancel")
    return job


def test_bad_uploads_get_their_documented_status(make_client):
    client = make_client(max_upload_bytes=20_000, max_output_pixels=100 * 100)
    cases = [
        (dict(files={"image": ("x.png", b"not an image at all", "image/png")}), 415, "unsupported_image"),
        (dict(files={"image": ("x.png", b"", "image/png")}), 415, "empty_image"),
        (dict(data={"scale": "2"}, files={"picture": ("x.png", b"x", "image/png")}), 422, "missing_image"),
        (dict(data={"scale": "2"}), 415, "unsupported_media_type"),  # a urlencoded form cannot carry a file
        (dict(files={"image": ("x.png", png_bytes(60, 60), "image/png")}), 422, "output_too_large"),
        (dict(files={"image": ("x.png", b"\0" * 30_000, "image/png")}), 413, "payload_too_large"),
        (dict(json={"image_base64": "%%%not base64%%%"}), 422, "invalid_base64"),
        (dict(json={"scale": 2}), 422, "invalid_parameters"),
        (dict(content=b"{broken json", headers={"content-type": "application/json"}), 422, "invalid_json"),
        (dict(content=b"raw bytes", headers={"content-type": "image/png"}), 415, "unsupported_media_type"),
        (dict(content=b"x" * 200_000, headers={"content-type": "application/json"}), 413, "payload_too_large"),
    ]
    for kwargs, status, code in cases:
        response = client.post("/v1/jobs", **kwargs)
        assert (response.status_code, response.json()["error"]["code"]) == (status, code), (kwargs.keys(), response.text)


def test_listing_is_newest_first_and_filters_by_status(make_client):
    client = make_client(api_keys=("list-key-" + new_job_id(),))
    client.headers["authorization"] = "Bearer " + client.app.state.settings.api_keys[0].get_secret_value()
    ids = [submit(client, png_bytes(), method="bicubic")["id"] for _ in range(3)]
    for job_id in ids:
        wait_for(client, job_id)
    listed = client.get("/v1/jobs", params={"limit": 10}).json()
    assert [job["id"] for job in listed["jobs"]] == ids[::-1] and listed["count"] == 3
    assert client.get("/v1/jobs", params={"status": "queued"}).json()["jobs"] == []
    assert [j["id"] for j in client.get("/v1/jobs", params={"status": "succeeded", "limit": 2}).json()["jobs"]] \
        == ids[::-1][:2]
    assert client.get("/v1/jobs", params={"status": "bogus"}).status_code == 422


def test_keys_are_required_and_jobs_are_private_to_their_key(make_client):
    client = make_client(api_keys=("key-one-" + "a" * 20, "key-two-" + "b" * 20))
    one, two = ({"authorization": f"Bearer {k}"} for k in ("key-one-" + "a" * 20, "key-two-" + "b" * 20))
    unauthorized = client.post("/v1/jobs", files={"image": ("x.png", png_bytes(), "image/png")})
    assert unauthorized.status_code == 401 and unauthorized.json()["error"]["code"] == "unauthorized"
    assert client.get("/v1/jobs", headers={"authorization": "Bearer wrong"}).status_code == 401
    job = client.post("/v1/jobs", files={"image": ("x.png", png_bytes(), "image/png")}, data={"method": "bicubic"},
                      headers=one).json()
    assert client.get(f"/v1/jobs/{job['id']}", headers=one).status_code == 200
    assert client.get(f"/v1/jobs/{job['id']}", headers={"x-api-key": "key-one-" + "a" * 20}).status_code == 200
    for method, path in (("GET", ""), ("GET", "/result"), ("POST", "/cancel")):
        response = client.request(method, f"/v1/jobs/{job['id']}{path}", headers=two)
        assert response.status_code == 404, (method, path)
    assert client.get("/v1/jobs", headers=two).json()["jobs"] == []


def test_webhooks_are_signed_retried_with_one_id_and_recorded(client):
    with WebhookReceiver(fail_first=2) as receiver:
        job = submit(client, png_bytes(), method="bicubic", webhook_url=receiver.url)
        receiver.wait_for(lambda: any(r["attempt"] == 3 for r in receiver.events("job.succeeded")))
        receiver.wait_for(lambda: any(r["attempt"] == 3 for r in receiver.events("job.started")))
        succeeded = receiver.events("job.succeeded")
        assert all(r["verified"] for r in receiver.received)
        assert len({r["headers"]["webhook-id"] for r in succeeded}) == 1 and len(succeeded) == 3
        body = succeeded[-1]["body"]
        assert body["data"]["id"] == job["id"] and body["data"]["status"] == "succeeded" and body["timestamp"]
        JobPublic.model_validate(body["data"])

        def recorded_all(job_now):
            return job_now["webhook"]["attempts"] == 6

        final = wait_for(client, job["id"], statuses=("succeeded",))
        deadline = time.monotonic() + 10
        while not recorded_all(final) and time.monotonic() < deadline:
            time.sleep(0.1)
            final = client.get(f"/v1/jobs/{job['id']}").json()
        webhook = final["webhook"]
        assert webhook["attempts"] == 6 and webhook["last_status"] == 204 and webhook["delivered_at"]
        outcomes = sorted(d["outcome"] for d in webhook["deliveries"])
        assert outcomes == ["delivered"] * 2 + ["retrying"] * 4


def test_a_redirecting_receiver_is_not_followed_and_the_job_is_unaffected(client):
    with WebhookReceiver(redirect=True) as receiver:
        job = submit(client, png_bytes(), method="bicubic", webhook_url=receiver.url)
        done = wait_for(client, job["id"])
        assert done["status"] == "succeeded"
        receiver.wait_for(lambda: len(receiver.events("job.succeeded")) >= 2)
        time.sleep(0.3)  # let the worker record the second attempt
        record = client.get(f"/v1/jobs/{job['id']}").json()["webhook"]
    assert record["delivered_at"] is None and record["attempts"] >= 2
    redirected = [d for d in record["deliveries"] if d["status"] == 302]
    assert len(redirected) >= 2 and all(d["error"] == "redirect not followed" for d in redirected)
    assert not any(r["headers"].get("webhook-id") is None for r in receiver.received)


def test_webhook_targets_are_checked_at_submission(make_client):
    client = make_client(webhook_allow_private=False)
    response = client.post("/v1/jobs", files={"image": ("x.png", png_bytes(), "image/png")},
                           data={"method": "bicubic", "webhook_url": "http://127.0.0.1:9/hook"})
    assert response.status_code == 422 and response.json()["error"]["code"] == "webhook_url_refused"
    no_secret = make_client(webhook_secret=None)
    response = no_secret.post("/v1/jobs", files={"image": ("x.png", png_bytes(), "image/png")},
                              data={"method": "bicubic", "webhook_url": "https://example.com/hook"})
    assert response.status_code == 422 and response.json()["error"]["code"] == "webhooks_disabled"


def test_metrics_and_readiness(client):
    wait_for(client, submit(client, png_bytes(), method="bicubic")["id"])
    text = client.get("/metrics").text
    for family in ("upscaler_jobs{", "upscaler_jobs_status_total{", "upscaler_queue_depth{queue=\"gpu\"}",
                   "upscaler_job_run_seconds_bucket{", "upscaler_job_queue_seconds_count{",
                   "upscaler_webhook_deliveries_total{", "upscaler_workers{"):
        assert family in text, family
    succeeded = [line for line in text.splitlines() if line.startswith('upscaler_jobs_status_total{status="succeeded"}')]
    assert succeeded and float(succeeded[0].split()[-1]) >= 1
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["queues"]["light"] >= 1
    assert client.get("/healthz").json() == {"status": "ok"}


def test_openapi_documents_both_submission_bodies(client):
    spec = client.get("/openapi.json").json()
    body = spec["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]
    assert {"multipart/form-data", "application/json"} <= set(body)
    assert "image_base64" in body["application/json"]["schema"]["properties"]
    assert {"/v1/jobs/{job_id}", "/v1/jobs/{job_id}/result", "/v1/jobs/{job_id}/cancel", "/metrics",
            "/readyz", "/healthz"} <= set(spec["paths"])
    assert client.get("/docs").status_code == 200


def test_readiness_fails_without_redis(make_client):
    client = make_client(redis_url="redis://127.0.0.1:1/0")
    response = client.get("/readyz")
    assert response.status_code == 503 and response.json()["redis"] is False
    response = client.get(f"/v1/jobs/{new_job_id()}")
    assert response.status_code == 503 and response.json()["error"]["code"] == "store_unavailable"
    assert response.headers["retry-after"] == "5"
    assert math.isfinite(float(response.headers["retry-after"]))

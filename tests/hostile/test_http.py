"""HTTP as it is spoken to the API: `Allow` lists every method of a path, HEAD answers as GET without a body, no
redirect is built from the Host header, `nosniff` is on every answer, browsers get CORS only from the origins
configured, and failed authentications are limited per client address."""
from __future__ import annotations

import ipaddress
import secrets

import pytest
from fastapi.testclient import TestClient
from starlette.requests import Request

from api.deps import client_address
from api.main import create_app
from jobs.settings import Settings
from tests.e2e.helpers import png_bytes, submit, wait_for

JOB = "0" * 32
KEY = "hostile-key-" + "5" * 24


@pytest.mark.parametrize("method, path, allow", [
    ("PUT", "/v1/jobs", "GET, HEAD, POST"),
    ("DELETE", "/v1/jobs", "GET, HEAD, POST"),
    ("PATCH", f"/v1/jobs/{JOB}", "GET, HEAD"),
    ("GET", f"/v1/jobs/{JOB}/cancel", "POST"),
    ("HEAD", f"/v1/jobs/{JOB}/cancel", "POST"),
    ("POST", f"/v1/jobs/{JOB}/result", "GET, HEAD"),
    ("POST", "/healthz", "GET, HEAD"),
    ("POST", "/static/app.js", "GET, HEAD"),
])
def test_a_405_lists_every_method_its_path_serves(client, method, path, allow):
    response = client.request(method, path)
    assert response.status_code == 405 and response.headers["allow"] == allow
    if method != "HEAD":
        assert response.json()["error"]["code"] == "method_not_allowed"


def test_head_answers_as_get_without_a_body(client):
    job = submit(client, png_bytes(), method="bicubic")
    wait_for(client, job["id"])
    for path in ("/v1/jobs", f"/v1/jobs/{job['id']}", f"/v1/jobs/{job['id']}/result", f"/v1/jobs/{JOB}", "/healthz",
                 "/", "/static/app.js", "/openapi.json", "/docs"):
        got, head = client.get(path), client.head(path)
        assert head.status_code == got.status_code, path
        assert head.content == b"", path
        assert head.headers["content-type"] == got.headers["content-type"], path
        if "content-length" in got.headers and path != "/v1/jobs":  # the list's times move between the two calls
            assert head.headers["content-length"] == got.headers["content-length"], path


def test_head_on_an_event_stream_ends_after_its_headers(client):
    job = submit(client, png_bytes(), method="bicubic")
    head = client.head(f"/v1/jobs/{job['id']}/events")
    assert head.status_code == 200 and head.headers["content-type"].startswith("text/event-stream")
    assert head.content == b""


@pytest.mark.parametrize("path", ["/v1/jobs/", f"/v1/jobs/{JOB}/", f"/v1/jobs/{JOB}/result/", "/healthz/"])
def test_no_redirect_is_built_from_the_host_header(client, path):
    response = client.get(path, headers={"host": "evil.example"}, follow_redirects=False)
    assert response.status_code == 404 and "location" not in response.headers
    assert response.json()["error"]["code"] == "not_found"


def test_every_answer_says_nosniff(client):
    job = submit(client, png_bytes(), method="bicubic")
    wait_for(client, job["id"])
    answers = [client.get("/v1/jobs"), client.get(f"/v1/jobs/{job['id']}"), client.get(f"/v1/jobs/{job['id']}/result"),
               client.get(f"/v1/jobs/{job['id']}/result?encoding=base64"), client.get(f"/v1/jobs/{JOB}"),
               client.put("/v1/jobs"), client.get("/nowhere"), client.get("/v1/jobs?limit=-1"), client.get("/docs"),
               client.get("/openapi.json"), client.get("/"), client.get("/static/app.js"), client.get("/healthz"),
               client.get("/metrics"), client.head("/v1/jobs"),
               client.post("/v1/jobs", content=b"x", headers={"content-type": "text/plain"})]
    for response in answers:
        assert response.headers.get("x-content-type-options") == "nosniff", response.request.url
    assert client.get("/").headers.get_list("x-content-type-options") == ["nosniff"]  # the page's own, once


PREFLIGHT = {"origin": "https://app.example", "access-control-request-method": "POST",
             "access-control-request-headers": "authorization, content-type"}


def test_without_cors_origins_no_origin_is_allowed(client):
    assert client.app.state.settings.cors_origins == ()
    preflight = client.options("/v1/jobs", headers=PREFLIGHT)
    assert preflight.status_code == 405 and "access-control-allow-origin" not in preflight.headers
    plain = client.get("/v1/jobs", headers={"origin": "https://app.example"})
    assert "access-control-allow-origin" not in plain.headers


def test_cors_origins_are_allowed_with_their_preflight_answered(make_client):
    client = make_client(cors_origins=("https://app.example", "http://localhost:3000"))
    preflight = client.options("/v1/jobs", headers=PREFLIGHT)
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "https://app.example"
    assert "POST" in preflight.headers["access-control-allow-methods"]
    assert {"authorization", "content-type"} <= {h.strip().lower() for h in
                                                  preflight.headers["access-control-allow-headers"].split(",")}
    job = client.post("/v1/jobs", files={"image": ("a.png", png_bytes(), "image/png")}, data={"method": "bicubic"},
                      headers={"origin": "http://localhost:3000"})
    assert job.status_code == 202 and job.headers["access-control-allow-origin"] == "http://localhost:3000"
    assert "location" in job.headers["access-control-expose-headers"].lower()
    other = client.options("/v1/jobs", headers={**PREFLIGHT, "origin": "https://evil.example"})
    assert other.status_code == 400 and "access-control-allow-origin" not in other.headers
    plain = client.get("/v1/jobs", headers={"origin": "https://evil.example"})
    assert "access-control-allow-origin" not in plain.headers


@pytest.mark.parametrize("origins", ["https://app.example/", "app.example", "ftp://app.example", "https://a.b/path"])
def test_a_cors_origin_that_no_browser_sends_is_refused(origins):
    with pytest.raises(ValueError, match="UPSCALER_CORS_ORIGINS"):
        Settings(cors_origins=origins)


def keyed_client(settings: Settings, address: str, **changes) -> TestClient:
    app = create_app(Settings(**{**settings.model_dump(), "api_keys": KEY, **changes}))
    return TestClient(app, client=(address, 40000))


def test_failed_authentications_past_the_limit_are_answered_429_for_every_key_from_that_address(settings,
                                                                                                  worker_process):
    address = f"198.51.100.{secrets.randbelow(250) + 1}"  # a fresh address: the count lives in Redis for its window
    limits = {"auth_failure_limit": 5, "auth_failure_window_seconds": 60}
    with keyed_client(settings, address, **limits) as client, keyed_client(settings, address, **limits) as other, \
            keyed_client(settings, "203.0.113.9", **limits) as elsewhere:
        wrong = {"authorization": "Bearer wrong-key"}
        statuses = [client.get("/v1/jobs", headers=wrong).status_code for _ in range(5)]
        assert statuses == [401] * 5
        refused = client.get("/v1/jobs", headers=wrong)
        assert refused.status_code == 429 and refused.json()["error"]["code"] == "too_many_auth_failures"
        assert 1 <= int(refused.headers["retry-after"]) <= 60
        # the right key from that address is refused too: a 429 for wrong keys only would confirm a guess
        assert client.get("/v1/jobs", headers={"authorization": f"Bearer {KEY}"}).status_code == 429
        assert client.get(f"/v1/jobs/{JOB}", headers={"authorization": f"Bearer {KEY}"}).status_code == 429
        # another API process (the same Redis) refuses that address from its first failure on
        assert other.get("/v1/jobs", headers=wrong).status_code == 429
        assert other.get("/v1/jobs", headers={"authorization": f"Bearer {KEY}"}).status_code == 429
        # another address is not affected
        assert elsewhere.get("/v1/jobs", headers={"authorization": f"Bearer {KEY}"}).status_code == 200
        assert elsewhere.get("/v1/jobs", headers=wrong).status_code == 401


def test_without_a_limit_failed_authentications_stay_401(settings, worker_process):
    with keyed_client(settings, "198.51.100.77", auth_failure_limit=0) as client:
        assert {client.get("/v1/jobs").status_code for _ in range(30)} == {401}


@pytest.mark.parametrize("host, counted_as", [
    ("198.51.100.7", "198.51.100.7"),
    ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
    ("2001:db8:1:2:bbbb::9", "2001:db8:1:2::/64"),
    ("::ffff:198.51.100.7", "198.51.100.7"),
    ("testclient", "testclient"),
])
def test_failures_are_counted_per_ipv4_address_and_per_ipv6_64(host, counted_as):
    request = Request({"type": "http", "method": "GET", "path": "/", "headers": [], "client": (host, 1)})
    assert client_address(request) == counted_as
    if ":" in counted_as:
        ipaddress.ip_network(counted_as)

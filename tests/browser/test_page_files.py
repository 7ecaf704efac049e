"""The page's files as the API serves them (no browser needed): headers, assets, and only public API routes."""
from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from api.routes.page import STATIC_DIR


@pytest.fixture
def api(settings):
    with TestClient(create_app(settings)) as client:
        yield client


def test_the_page_is_served_at_the_root_with_a_strict_content_security_policy(api):
    response = api.get("/")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    policy = response.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "connect-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert response.headers["x-content-type-options"] == "nosniff"
    assert '<script type="module" src="/static/app.js">' in response.text
    assert "/" not in api.get("/openapi.json").json()["paths"]  # the page is not part of the API's schema


def test_the_assets_are_served_with_their_types_and_unknown_ones_get_the_error_shape(api):
    assert api.get("/static/app.js").headers["content-type"].split(";")[0] in ("text/javascript",
                                                                               "application/javascript")
    assert api.get("/static/style.css").headers["content-type"].startswith("text/css")
    missing = api.get("/static/nothing.js")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"


def test_the_page_script_calls_only_documented_public_routes(api):
    script = (STATIC_DIR / "app.js").read_text()
    called = {re.sub(r"\$\{[^}]+\}", "{job_id}", path).split("?")[0]
              for path in re.findall(r"[`'](/(?:v1|readyz|healthz)[^`']*)[`']", script)}
    documented = set(api.get("/openapi.json").json()["paths"])
    assert {"/v1/jobs", "/v1/jobs/{job_id}/events", "/v1/jobs/{job_id}/result"} <= called
    assert called <= documented, called - documented
    assert not re.search(r"api_key=|[?&]key=", script)  # the key travels in a header, never in a URL

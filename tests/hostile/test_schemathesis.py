"""Schemathesis over the API's OpenAPI schema: generated valid and invalid requests for every operation,
over real HTTP (uvicorn), against a real worker and Redis. No answer may be a 5xx; every answer must be one
the schema documents, in the documented shape."""
from __future__ import annotations


import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (content_type_conformance, response_schema_conformance,
                                               status_code_conformance)

from api.main import create_app
from tests.hostile.cases import LIMITS
from tests.live import serve
from jobs.settings import Settings

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture(scope="module")
def live_api(settings, worker_process):
    app = create_app(Settings(**{**settings.model_dump(), **LIMITS}))
    with serve(app) as base_url:
        yield base_url


@pytest.fixture(scope="module")
def api_schema(live_api):
    return schemathesis.openapi.from_url(f"{live_api}/openapi.json")


def operations() -> list[str]:
    """The operations the schema lists (the test below is run once per operation)."""
    return ["POST /v1/jobs", "GET /v1/jobs", "GET /v1/jobs/{job_id}", "GET /v1/jobs/{job_id}/result",
            "POST /v1/jobs/{job_id}/cancel", "GET /v1/jobs/{job_id}/events", "GET /healthz", "GET /readyz",
            "GET /metrics"]


def test_every_operation_of_the_schema_is_tested_here(api_schema):
    listed = {f"{result.ok().method.upper()} {result.ok().path}" for result in api_schema.get_all_operations()}
    assert set(operations()) == listed, listed


@pytest.mark.parametrize("label", operations())
def test_generated_requests_get_documented_answers_and_never_a_5xx(api_schema, live_api, label):
    # Schemathesis' pytest plugin does not run under this pytest, so its strategies drive Hypothesis directly.
    method, path = label.split(" ")
    operation = api_schema[path][method]

    @settings(max_examples=40, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy())
    def check(case):
        case.call_and_validate(base_url=live_api, checks=CHECKS)

    check()

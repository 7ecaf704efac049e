"""The API's start-up warm-up (api/main.py warm_up): what FastAPI builds on the first request is built before the
first client's request arrives, and the warm-up requests touch no key's rate and no job."""
from __future__ import annotations

import fastapi.routing
import redis
from fastapi.testclient import TestClient

from api.main import create_app
from jobs.settings import Settings
from jobs.store import PREFIX

KEY = "warm-up-test-key-" + "5" * 16


def test_the_first_requests_find_every_route_built_and_the_warm_up_counted_nothing(settings, redis_server,
                                                                                   monkeypatch):
    store = redis.Redis.from_url(redis_server.url)
    counted_before = set(store.scan_iter(f"{PREFIX}rate:*"))
    app = create_app(Settings(**{**settings.model_dump(), "api_keys": KEY, "rate_limit_per_second": 1.0,
                                 "rate_limit_burst": 5}))
    with TestClient(app) as client:
        assert set(store.scan_iter(f"{PREFIX}rate:*")) == counted_before  # no request was counted at start-up
        built = []  # routes whose dependencies FastAPI works out now, on a client's request

        def get_dependant(*args, **kwargs):
            built.append(kwargs.get("path"))
            return original(*args, **kwargs)

        original = fastapi.routing.get_dependant
        monkeypatch.setattr(fastapi.routing, "get_dependant", get_dependant)
        assert client.get("/no-such-route").status_code == 404
        assert client.get("/healthz").status_code == 200
        assert client.get("/v1/jobs", headers={"authorization": f"Bearer {KEY}"}).status_code == 200
        assert client.get("/v1/jobs/" + "0" * 32, headers={"authorization": f"Bearer {KEY}"}).status_code == 404
    store.close()
    assert built == []

"""Fixtures of the client tests: the real stack (tests/conftest.py: Redis, `python -m worker`) with the API under
uvicorn on a real socket, since the client speaks HTTP over the network (tests/live.py)."""
from __future__ import annotations

import logging
import secrets
from contextlib import ExitStack

import pytest

from api.main import create_app
from tests.live import serve
from jobs.settings import Settings


@pytest.fixture
def serve_api(settings, worker_process):
    """Start the API on a free port with these settings changed; returns its base URL."""
    with ExitStack() as stack:
        def start(**changes) -> str:
            return stack.enter_context(serve(create_app(Settings(**{**settings.model_dump(), **changes}))))

        yield start


@pytest.fixture
def api_key() -> str:
    """A key of the test's own, so that the jobs it lists are its own."""
    return "client-test-" + secrets.token_hex(8)


@pytest.fixture
def api_url(serve_api, api_key) -> str:
    return serve_api(api_keys=api_key)


class OnRetry(logging.Handler):
    """Calls `action` once, the first time the client announces a retry (it logs one before sleeping)."""

    def __init__(self, action):
        super().__init__(logging.INFO)
        self.action, self.messages = action, []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith("retrying"):
            self.messages.append(message)
            if len(self.messages) == 1:
                self.action()


@pytest.fixture
def on_retry():
    """Install an OnRetry handler on the client's logger for the test."""
    logger = logging.getLogger("zssr_client")
    handlers, level = [], logger.level

    def install(action=lambda: None) -> OnRetry:
        handler = OnRetry(action)
        logger.addHandler(handler)
        handlers.append(handler)
        return handler

    logger.setLevel(logging.INFO)
    yield install
    for handler in handlers:
        logger.removeHandler(handler)
    logger.setLevel(level)

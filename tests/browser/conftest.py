"""Browser fixtures: Debian's chromium driven by Playwright (never a downloaded browser), the real stack behind it.

Without chromium (or the playwright package) the browser tests skip with the reason; with CI=true they fail instead.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from api.main import create_app
from tests.live import serve
from jobs.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}


def _unavailable(reason: str):
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason}; CI=true requires the browser tests to run")
    pytest.skip(reason)


def chromium_path() -> str | None:
    """CHROMIUM_PATH, else Debian's chromium on PATH or at /usr/bin/chromium."""
    if os.environ.get("CHROMIUM_PATH"):
        return os.environ["CHROMIUM_PATH"]
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    return found or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)


@pytest.fixture(scope="session")
def chromium_executable() -> str:
    path = chromium_path()
    if not path:
        _unavailable("Debian's chromium is not installed (apt-get install chromium, or set CHROMIUM_PATH)")
    if not os.access(path, os.X_OK):
        _unavailable(f"no executable chromium at {path} (CHROMIUM_PATH)")
    return path


@pytest.fixture(scope="module")
def playwright_driver(chromium_executable):
    """Playwright for one test module, not the session: while it runs it keeps an asyncio loop in this thread,
    and asyncio.run() in later tests (tests/worker) would refuse to start."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("the playwright package is not installed (pip install playwright; no browser download needed)")
    with sync_playwright() as driver:
        yield driver


@pytest.fixture
def open_browser(playwright_driver, chromium_executable, tmp_path):
    """Launch chromium with a fresh profile: `open_browser(viewport=...)` -> a browser context (closed after).

    An uncaught error in the page's script fails the test."""
    contexts, page_errors = [], []

    def launch(viewport: dict = DESKTOP):
        profile = tmp_path / f"profile-{len(contexts)}"
        context = playwright_driver.chromium.launch_persistent_context(
            str(profile), executable_path=chromium_executable, headless=True, args=CHROMIUM_ARGS,
            viewport=viewport, accept_downloads=True, downloads_path=str(tmp_path / "downloads"))
        context.set_default_timeout(30_000)
        context.on("weberror", lambda web_error: page_errors.append(str(web_error.error)))
        contexts.append(context)
        return context

    yield launch
    for context in contexts:
        context.close()
    assert not page_errors, f"the page's script failed: {page_errors}"


@pytest.fixture
def demo_server(settings, worker_process):
    """The API (and so the page) under uvicorn, with the real worker and Redis behind it: `demo_server(**settings)`."""
    servers = []

    def start(**changes) -> str:
        context = serve(create_app(Settings(**{**settings.model_dump(), **changes})))
        servers.append(context)
        return context.__enter__()

    yield start
    for context in servers:
        context.__exit__(None, None, None)


@pytest.fixture
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS

"""The API under uvicorn on a free port, in a thread, on the event loop `python -m api` runs (api/serving.py): for
clients that need a real socket (streams, browsers, raw HTTP)."""
from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from typing import Iterator

import uvicorn
from api.serving import LOOP

from jobs.redis_server import free_port


@contextmanager
def serve(app, timeout: float = 10.0) -> Iterator[str]:
    """Run the ASGI `app` until the block ends; yields its base URL."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning",
                                           timeout_graceful_shutdown=2, loop=LOOP))
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{server.config.port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)

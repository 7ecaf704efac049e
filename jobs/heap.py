"""Keep the garbage collector off the objects a process loads at start-up.

The API loads FastAPI, pydantic, Celery and kombu (about 90,000 objects); a worker also loads torch (about
210,000). They live as long as the process, yet every full collection walks all of them: 30-60 ms in the API
and 110-140 ms in a worker (measured on the 2-core VM), with every request, or a training step, on hold. That
was most of the API's submit latency tail under load (bench/RESULTS.md, "The submit path"). Frozen once start-up
is done, they are never scanned again; objects made later are collected as usual.
"""
from __future__ import annotations

import gc


def freeze_startup_objects() -> None:
    gc.collect()  # what start-up left as garbage is freed, not frozen
    gc.freeze()

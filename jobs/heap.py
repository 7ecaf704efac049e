"""Keep the garbage collector off the objects a process loads at start-up.

The API loads FastAPI, pydantic and kombu; a worker also loads torch: tens to hundreds of thousands of objects
that live as long as the process, yet every full collection walks all of them, with every request, or a training
step, on hold. That was most of the API's submit latency tail under load (bench/RESULTS.md, the API's submit
path). Frozen once start-up is done, they are never scanned again; objects made later are collected as usual.
"""
from __future__ import annotations

import gc


def freeze_startup_objects() -> None:
    gc.collect()  # what start-up left as garbage is freed, not frozen
    gc.freeze()

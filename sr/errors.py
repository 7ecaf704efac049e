"""The two exceptions `sr` raises on purpose: a stop that was asked for, and input it cannot process."""
from __future__ import annotations


class Cancelled(Exception):
    """Raised inside `upscale` when `should_stop()` returned True (checked every training step)."""


class InvalidInput(ValueError):
    """The image or a parameter cannot be processed; the message says why, in one sentence."""

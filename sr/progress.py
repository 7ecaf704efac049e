"""What `upscale` reports to its `progress` callback."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Progress:
    phase: str  # "training" | "inference"
    step: int
    total_steps: int  # an upper bound: training may stop earlier
    loss: float | None = None
    learning_rate: float | None = None

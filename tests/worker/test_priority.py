"""Worker processes run at UPSCALER_WORKER_NICE (default 19), so on a host shared with the API requests come first."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def niceness(pid: int) -> int:
    return os.getpriority(os.PRIO_PROCESS, pid)


def children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def test_the_worker_and_its_pools_run_at_the_default_nice_value(worker_process):
    pools = children(worker_process.pid)
    assert len(pools) == 2  # the gpu-queue and light-queue workers it supervises
    assert [niceness(pid) for pid in [worker_process.pid, *pools]] == [19, 19, 19]


def priorities_after(calls: str, *, started_at: int = 0) -> list[str]:
    """The nice values a fresh process (started at `started_at`) prints after each of `calls` (comma-separated
    lower_priority arguments)."""
    script = ("import os; from worker.__main__ import lower_priority\n"
              f"for nice in ({calls},):\n"
              "    lower_priority(nice); print(os.getpriority(os.PRIO_PROCESS, 0))")
    return subprocess.run(["nice", "-n", str(started_at), sys.executable, "-c", script], cwd=ROOT,
                          capture_output=True, text=True, check=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}).stdout.split()


def test_lower_priority_only_ever_lowers_it():
    assert priorities_after("5, 3, 0") == ["5", "5", "5"]


def test_zero_keeps_the_priority_it_was_started_with():
    assert priorities_after("0", started_at=3) == ["3"]

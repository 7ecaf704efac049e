"""Worker processes run at UPSCALER_WORKER_NICE (default 10), so on a host shared with the API requests come first."""
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
    assert [niceness(pid) for pid in [worker_process.pid, *pools]] == [10, 10, 10]


def test_lower_priority_only_ever_lowers_it():
    script = ("import os; from worker.__main__ import lower_priority as lower; "
              "lower(5); a = os.getpriority(os.PRIO_PROCESS, 0); "
              "lower(3); b = os.getpriority(os.PRIO_PROCESS, 0); "
              "lower(0); c = os.getpriority(os.PRIO_PROCESS, 0); print(a, b, c)")
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}).stdout
    assert out.split() == ["5", "5", "5"]


def test_zero_keeps_the_priority_it_was_started_with(tmp_path):
    out = subprocess.run(["nice", "-n", "3", sys.executable, "-c",
                          "import os; from worker.__main__ import lower_priority; lower_priority(0); "
                          "print(os.getpriority(os.PRIO_PROCESS, 0))"],
                         cwd=ROOT, capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}).stdout
    assert out.strip() == "3"

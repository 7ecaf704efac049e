"""Slow clients beside the standard load: `bench/api_load.py` alone and with connections that never finish their
request (half trickle their headers a byte a second, half stall their body), alternately, a few rounds each.

  python bench/slow_clients.py                    # 3 rounds, 200 slow clients, the API's default deadline
  python bench/slow_clients.py --rounds 4 --client-timeout 5 -- --jobs 1500   # after --: api_load.py options

Prints one line per run (submit p50/p99, p99 after each client's first round, jobs per second; with slow clients,
how many the API closed, how many it answered 408, and after how many seconds), then per variant the median and
the range of each figure. The machine may be shared with other work: alternating the variants keeps a drift in
its load from favouring one of them; compare the ranges, not single runs.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
FIGURES = ("submit_ms_p50", "submit_ms_p99", "submit_ms_p99_after_first_round", "jobs_per_second",
           "load_phase_seconds")
SLOW_FIGURES = ("slow_closed", "slow_answered_408", "slow_closed_after_s_min", "slow_closed_after_s_max")


def run_load(slow_clients: int, client_timeout: float | None, extra: list[str]) -> dict:
    command = [sys.executable, str(HERE / "api_load.py"), "--poll-seconds", "1", "--slow-clients", str(slow_clients),
               *extra]
    if client_timeout is not None:
        command += ["--client-timeout", str(client_timeout)]
    finished = subprocess.run(command, capture_output=True, text=True)
    if finished.returncode != 0:
        raise SystemExit(f"api_load.py failed ({finished.returncode}):\n"
                         f"{finished.stdout[-2000:]}{finished.stderr[-2000:]}")
    return json.loads(finished.stdout)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="runs of each variant, alternating")
    parser.add_argument("--slow-clients", type=int, default=200)
    parser.add_argument("--client-timeout", type=float, help="UPSCALER_CLIENT_TIMEOUT_SECONDS (default: the API's)")
    parser.add_argument("extra", nargs="*", help="options for bench/api_load.py (after --)")
    args = parser.parse_args()
    runs: dict[str, list[dict]] = {"baseline": [], "slow": []}
    for round_number in range(args.rounds):
        for variant, slow in (("baseline", 0), ("slow", args.slow_clients)):
            report = run_load(slow, args.client_timeout, args.extra)
            runs[variant].append(report)
            shown = {name: report[name] for name in FIGURES + (SLOW_FIGURES if slow else ()) if name in report}
            print(f"round {round_number + 1} {variant}: {json.dumps(shown)}", flush=True)
    summary = {}
    for variant, reports in runs.items():
        names = FIGURES + (SLOW_FIGURES if variant == "slow" else ())
        summary[variant] = {name: {"median": statistics.median(r[name] for r in reports),
                                   "min": min(r[name] for r in reports), "max": max(r[name] for r in reports)}
                            for name in names}
    print(json.dumps({"rounds": args.rounds, "slow_clients": args.slow_clients, "client_timeout_s": args.client_timeout,
                      "api_load_options": ["--poll-seconds", "1", *args.extra], **summary}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

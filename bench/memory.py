"""Peak memory of one large upscale: a 2048x2048 photo to 4096x4096 at x2 on the CPU, measured in a child process.

The training budget is cut to a few steps (the point is inference: tiles sized from `inference_memory_mb`, the
self-ensemble's passes, the median and back-projection at full size); the rest of the preset is as it ships.
The child reports its peak resident set (getrusage ru_maxrss) after importing torch and sr, after training
(at the first inference progress report) and at the end; the parent checks the same figure from its side
(RUSAGE_CHILDREN). Target (issue 2): well under 4 GiB.

  nice python bench/memory.py                         # fast preset, 20 training steps
  nice python bench/memory.py --preset balanced --steps 20
  python bench/memory.py --preset fast --overrides '{"inference_memory_mb": 128}'
  nice python bench/memory.py --preset balanced --steps 10 --overrides '{"width": 8, "depth": 4, "self_check": false}'
      # the 8-pass ensemble's memory with a cheap net (the full balanced net takes tens of minutes on 2 cores)
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from skimage import data  # noqa: E402  (a dev extra: the photo)

import sr  # noqa: E402

_KIB_PER_MIB = 1024  # Linux reports ru_maxrss in KiB


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="fast", choices=("fast", "balanced", "paper"))
    parser.add_argument("--steps", type=int, default=20, help="training steps (max_iters = min_iters)")
    parser.add_argument("--size", type=int, default=2048, help="side of the square input (output = 2x)")
    parser.add_argument("--overrides", default="{}", help="more ZSSRConfig fields, as a JSON object")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    return run_child(args) if args.child else run_parent(args)


def run_parent(args: argparse.Namespace) -> int:
    command = [sys.executable, str(Path(__file__).resolve()), "--child", "--preset", args.preset, "--steps",
               str(args.steps), "--size", str(args.size), "--overrides", args.overrides]
    load_before = load_average()
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        print(done.stderr, file=sys.stderr)
        return done.returncode
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    children_peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / _KIB_PER_MIB
    print(f"x2 of a {args.size}x{args.size} photo -> {figures['output_size']}, preset {args.preset}, "
          f"{args.steps} training steps, overrides {args.overrides}, {figures['torch_threads']} torch threads, "
          f"load average {load_before} -> {load_average()}")
    print("| peak RSS after imports | after training | whole run | (parent's view) | training s (wall / CPU) "
          "| inference s (wall / CPU) | inference tiles x passes |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    print(f"| {figures['peak_mib_after_imports']:.0f} MiB | {figures['peak_mib_after_training']:.0f} MiB | "
          f"**{figures['peak_mib']:.0f} MiB** | {children_peak_mib:.0f} MiB | "
          f"{figures['training_wall_s']:.1f} / {figures['training_cpu_s']:.1f} | "
          f"{figures['inference_wall_s']:.1f} / {figures['inference_cpu_s']:.1f} | {figures['inference_steps']} |")
    print(f"info: {json.dumps(figures['info'], default=str)}")
    if (figures["info"] or {}).get("fallback") == "cubic":
        print("warning: the self-check fell back to cubic, so the net never ran at full size and this peak is not "
              "the inference's; run again with --overrides '{\"self_check\": false}'")
    return 0


def run_child(args: argparse.Namespace) -> int:
    peak_after_imports = peak_rss_mib()
    photo = Image.fromarray(data.astronaut()).resize((args.size, args.size), Image.Resampling.BICUBIC)
    config = sr.config_for(args.preset, {"max_iters": args.steps, "min_iters": args.steps,
                                         **json.loads(args.overrides)})
    marks: dict[str, float] = {}
    inference_steps = [0]

    def on_progress(progress: sr.Progress) -> None:
        if progress.phase == "inference":
            if "inference_wall" not in marks:  # training is over: its peak is the peak so far
                marks.update(inference_wall=time.perf_counter(), inference_cpu=time.process_time(),
                             peak_after_training=peak_rss_mib())
            inference_steps[0] = progress.total_steps

    wall_start, cpu_start = time.perf_counter(), time.process_time()
    result = sr.upscale(photo, 2, method="zssr", preset=args.preset, config=config, device="cpu", seed=0,
                        progress=on_progress)
    wall_end, cpu_end = time.perf_counter(), time.process_time()
    assert result.size == (2 * args.size, 2 * args.size) and np.asarray(result).std() > 0
    inference_wall = marks.get("inference_wall", wall_end)
    inference_cpu = marks.get("inference_cpu", cpu_end)
    print(json.dumps({
        "output_size": f"{result.width}x{result.height}", "torch_threads": torch.get_num_threads(),
        "peak_mib_after_imports": peak_after_imports,
        "peak_mib_after_training": marks.get("peak_after_training", float("nan")), "peak_mib": peak_rss_mib(),
        "training_wall_s": inference_wall - wall_start, "training_cpu_s": inference_cpu - cpu_start,
        "inference_wall_s": wall_end - inference_wall, "inference_cpu_s": cpu_end - inference_cpu,
        "inference_steps": inference_steps[0], "info": result.info.get("sr"),
    }, default=str))
    return 0


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / _KIB_PER_MIB


def load_average() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


if __name__ == "__main__":
    sys.exit(main())

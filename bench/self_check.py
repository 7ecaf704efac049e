"""The self-check, before and after (issue 17): per image, bicubic, the net's output as the reference's training-data
check left it, and as the held-out check (sr/holdout.py) blends it, with the weight that would have been best.

One training per image serves both columns: the held-out check's probe draws from generators of its own, so the
main run (and its raw output) is the same with or without it; the "after" output is that raw output blended by the
probe's weight, exactly as `sr.upscale` blends it, and its seconds are the run's plus the probe's. The best weight is
found on a grid of 0.05 against the original (the oracle no check can see): it shows how well the check tracks.

  nice python bench/self_check.py --preset fast --set14 DIR --textures --json self_check_fast.json
  nice python bench/self_check.py --preset balanced --photos camera --textures --set14 DIR --set14-only baboon

The corpus is bench/quality.py's (the five scikit-image photos, Set14 from --set14 DIR, the textures grass and
gravel); `--extra brick moon` adds scikit-image images by name (the periodic texture and the smooth grayscale photo
on which the reference's check failed).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from quality import PHOTOS, TEXTURES, load_average, skimage_photo  # noqa: E402

import sr  # noqa: E402
from sr.evaluate import degrade, shave_for  # noqa: E402
from sr.holdout import HeldOutFigures  # noqa: E402
from sr.images import from_tensor, to_tensor  # noqa: E402
from sr.metrics import psnr  # noqa: E402
from sr.resize import cubic_resize, degradation_for, output_size  # noqa: E402
from sr.zssr import scale_held_out_check, zssr  # noqa: E402

GRID = [round(w, 2) for w in np.arange(0.0, 1.0001, 0.05)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="fast", choices=("fast", "balanced", "paper"))
    parser.add_argument("--config", type=Path, help="JSON overrides of the preset (the 'after' config)")
    parser.add_argument("--photos", nargs="*", default=list(PHOTOS), choices=PHOTOS)
    parser.add_argument("--set14", type=Path, metavar="DIR", help="also the Set14 photos in DIR (*.png)")
    parser.add_argument("--set14-only", nargs="*", metavar="NAME", help="only these of the Set14 photos")
    parser.add_argument("--textures", nargs="*", choices=TEXTURES, help="also grass and gravel (all if bare)")
    parser.add_argument("--extra", nargs="*", default=[], help="more scikit-image images by name")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, help="append one JSON line per image here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    after = sr.config_for(args.preset, json.loads(args.config.read_text()) if args.config else None)
    if not after.self_check_probe_steps:
        parser.error(f"the {args.preset} config holds no probe (self_check_probe_steps); pass --config")
    before = dataclasses.replace(after, self_check_probe_steps=0)

    photos = {name: skimage_photo(name) for name in args.photos or []}
    if args.set14:
        photos.update({path.stem: Image.open(path) for path in sorted(args.set14.glob("*.png"))
                       if not args.set14_only or path.stem in args.set14_only})
    if args.textures is not None:
        photos.update({name: skimage_photo(name) for name in (args.textures or TEXTURES)})
    photos.update({name: skimage_photo(name) for name in args.extra})
    setting = {"preset": args.preset, "config": str(args.config) if args.config else None, "seed": args.seed,
               "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "load_average": load_average()}
    print(f"x2, Y-channel PSNR, 2 px shaved; setting: {json.dumps(setting)}")
    print("| image | bicubic dB | before gain | before blend | after gain | after blend | held-out gain dB | "
          "best weight (gain) | s before | s probe |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, photo in photos.items():
        row = measure(name, photo, before, after, args.seed)
        print(f"| {name} | {row['bicubic']:.2f} | {row['before_gain']:+.2f} | {row['before_blend']:.2f} | "
              f"{row['after_gain']:+.2f} | {row['after_blend']:.2f} | {row['held_out_gain_db']:+.2f} | "
              f"{row['best_weight']:.2f} ({row['best_gain']:+.2f}) | {row['seconds_before']:.1f} | "
              f"{row['seconds_probe']:.1f} |", flush=True)
        if args.json:
            with args.json.open("a") as out:
                out.write(json.dumps({**row, "preset": args.preset, "load_average": load_average()}) + "\n")
    return 0


def measure(name: str, photo: Image.Image, before: sr.ZSSRConfig, after: sr.ZSSRConfig, seed: int) -> dict:
    hr, lr = degrade(photo, 2.0)
    color, _, meta = to_tensor(lr)
    sf, degradation = (2.0, 2.0), degradation_for("bicubic")
    cubic = cubic_resize(color, output_size(color.shape[-2], color.shape[-1], sf)).clamp_(0.0, 1.0)
    started = time.perf_counter()
    output, info = zssr(color, sf, before, degradation=degradation, seed=seed)
    seconds_before = time.perf_counter() - started
    old_blend = info["self_check"]["blend"]
    if old_blend <= 0.0:  # the old check threw the net's output away: run again without it for the raw output
        output, _ = zssr(color, sf, dataclasses.replace(before, self_check=False), degradation=degradation, seed=seed)
        raw = output
    else:
        raw = (output - (1.0 - old_blend) * cubic) / old_blend
    started = time.perf_counter()
    figures: HeldOutFigures = scale_held_out_check(color, sf, degradation, after, seed)
    seconds_probe = time.perf_counter() - started

    def score(weight: float) -> float:
        blended = weight * raw + (1.0 - weight) * cubic
        return psnr(hr, from_tensor(blended.clamp(0.0, 1.0), None, meta), shave_for(sf))

    grid = {weight: score(weight) for weight in GRID}
    best = max(grid, key=grid.get)
    bicubic = grid[0.0]
    return {"image": name, "bicubic": bicubic, "net_gain": grid[1.0] - bicubic,
            "before_blend": old_blend, "before_gain": score(old_blend) - bicubic,
            "after_blend": figures.blend, "after_gain": score(figures.blend) - bicubic,
            "held_out_gain_db": figures.gain_db, "held_out_weight": figures.weight,
            "best_weight": best, "best_gain": grid[best] - bicubic, "train_steps": info["train_steps"],
            "seconds_before": seconds_before, "seconds_probe": seconds_probe}


if __name__ == "__main__":
    sys.exit(main())

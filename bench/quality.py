"""Quality and speed of `sr` against bicubic, under the evaluation protocol of docs/algorithm.md.

Each photo is cropped to a multiple of the scale and downscaled with Pillow's antialiased bicubic; the result is
upscaled back by bicubic and by ZSSR with each preset asked for, and scored on the Y channel (BT.601), `scale`
pixels shaved. Prints a markdown table (PSNR/SSIM, gain over bicubic, wall and CPU seconds of the upscale per
image) and, per preset, the mean and the least gain.

  nice python bench/quality.py --preset fast                 # the five scikit-image photos, x2
  nice python bench/quality.py --preset fast balanced --json quality.json
  python bench/quality.py --preset paper --device cuda --set14 DIR   # + the 14 Set14 photos in DIR
  nice python bench/quality.py --preset fast --set14 DIR --textures  # the self-check's corpus (issue 17)

Set14 is the standard super-resolution test set (Zeyde et al. 2010; the 14 PNGs ship with most SR codebases, e.g.
the ZSSR reference's test data): pass the folder that holds baboon.png ... zebra.png.

The photos (scikit-image 0.26 `skimage.data`), high resolution = the x2 output, never resampled (a resampled
original would be smoother than a photo and flatter the method); larger ones are center-cropped to 512 at most.
Width x height of the original as measured (the x2 input is half of it): astronaut 512x512, chelsea 450x300 (its
whole 451x300 frame, cropped to even), coffee 512x400 (center crop of 600x400), camera 512x512 (grey),
immunohistochemistry ("ihc") 512x512. The textures (`--textures`, grayscale): scikit-image's grass and gravel,
512x512; with Set14's baboon and barbara they are the images where a net that fits its training data can still lose
to cubic, which the self-check must catch (sr/holdout.py).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from PIL import Image  # noqa: E402
from skimage import data  # noqa: E402  (a dev extra: the photos)

import sr  # noqa: E402
from sr.evaluate import (BICUBIC, EvalRow, degrade, format_table, run_method, shave_for,  # noqa: E402
                         summarize, zssr_label)

PHOTOS = ("astronaut", "chelsea", "coffee", "camera", "ihc")
TEXTURES = ("grass", "gravel")
_SKIMAGE_NAMES = {"ihc": "immunohistochemistry"}
_LARGEST_SIDE = 512


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", nargs="+", default=["fast"], choices=("fast", "balanced", "paper"))
    parser.add_argument("--config", type=Path, help="JSON overrides applied to every preset (sr.config_for)")
    parser.add_argument("--scale", type=float, default=2.0)
    parser.add_argument("--photos", nargs="*", default=list(PHOTOS), choices=PHOTOS,
                        help="which scikit-image photos (default all five; none with --set14 for Set14 alone)")
    parser.add_argument("--set14", type=Path, metavar="DIR", help="also the Set14 photos in DIR (*.png)")
    parser.add_argument("--set14-only", nargs="*", metavar="NAME", help="only these of the Set14 photos")
    parser.add_argument("--textures", nargs="*", choices=TEXTURES,
                        help="also scikit-image's grass and gravel (grayscale; all when named without values)")
    parser.add_argument("--device", choices=("cpu", "cuda"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument("--json", type=Path, help="write the rows, the summaries and the setting here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    overrides = json.loads(args.config.read_text()) if args.config else None
    configs = {preset: sr.config_for(preset, overrides) if overrides else None for preset in args.preset}
    photos = {name: skimage_photo(name) for name in args.photos or []}
    groups = {"photos": list(photos)}
    if args.set14:
        set14 = {path.stem: Image.open(path) for path in sorted(args.set14.glob("*.png"))
                 if not args.set14_only or path.stem in args.set14_only}
        if not set14:
            parser.error(f"no Set14 photos in {args.set14}")
        photos.update(set14)
        groups["Set14"] = list(set14)
    if args.textures is not None:
        textures = {name: skimage_photo(name) for name in (args.textures or TEXTURES)}
        photos.update(textures)
        groups["textures"] = list(textures) + [name for name in ("baboon", "barbara") if name in photos]
    if not photos:
        parser.error("no photos to measure")
    setting = describe_setting(args)
    print(f"# sr quality, x{args.scale:g}: {setting['torch_threads']} torch threads, device "
          f"{args.device or 'default'}, load average {setting['load_average_start']}", file=sys.stderr, flush=True)

    rows: list[EvalRow] = []
    started = time.perf_counter()
    for name, photo in photos.items():
        hr, lr = degrade(photo, args.scale)
        bicubic = run_method(hr, lr, args.scale, name=name, method=BICUBIC, seed=args.seed, device=args.device)
        rows.append(bicubic)
        report(bicubic)
        for preset in args.preset:
            rows.append(run_method(hr, lr, args.scale, name=name, method="zssr", preset=preset,
                                   config=configs[preset], label=zssr_label(preset, configs[preset]),
                                   seed=args.seed, device=args.device))
            report(rows[-1], bicubic)
    setting["load_average_end"] = load_average()
    setting["total_wall_seconds"] = round(time.perf_counter() - started, 1)

    print(f"x{args.scale:g}, Y-channel PSNR (dB) / SSIM, {shave_for(args.scale)} px shaved; seconds = the "
          f"upscale alone (wall / process CPU); * = the core fell back toward bicubic")
    print(f"setting: {json.dumps(setting)}")
    print()
    print(format_table(rows))
    print()
    group_summaries = {}
    for group, names in [("all", list(photos))] + list(groups.items()):
        if not names or (group != "all" and len(groups) == 1):
            continue
        group_summaries[group] = summarize([row for row in rows if row.image in names])
        for summary in group_summaries[group]:
            if summary.method != BICUBIC:
                worst = min((row for row in rows if row.method == summary.method and row.image in names),
                            key=lambda row: gain_of(row, rows))
                print(f"- {group}, {summary.method}: mean gain {summary.mean_gain:+.2f} dB, worst "
                      f"{summary.min_gain:+.2f} dB ({worst.image}), {summary.mean_wall_seconds:.1f} s wall / "
                      f"{summary.mean_cpu_seconds:.1f} s CPU per image ({summary.images} images)")
    if args.json:
        args.json.write_text(json.dumps({"setting": setting, "rows": [asdict(row) for row in rows],
                                         "groups": groups,
                                         "summaries": {group: [asdict(summary) for summary in summaries]
                                                       for group, summaries in group_summaries.items()}},
                                        indent=1, default=str))
    return 0


def gain_of(row: EvalRow, rows: list[EvalRow]) -> float:
    return row.psnr - next(r.psnr for r in rows if r.image == row.image and r.method == BICUBIC)


def skimage_photo(name: str) -> Image.Image:
    """The scikit-image photo, center-cropped to at most 512 on each side (never resampled)."""
    photo = Image.fromarray(getattr(data, _SKIMAGE_NAMES.get(name, name))())
    width, height = min(photo.width, _LARGEST_SIDE), min(photo.height, _LARGEST_SIDE)
    left, top = (photo.width - width) // 2, (photo.height - height) // 2
    return photo.crop((left, top, left + width, top + height))


def report(row: EvalRow, bicubic: EvalRow | None = None) -> None:
    """One line per finished run on stderr, so a long benchmark shows where it is."""
    gain = f", gain {row.psnr - bicubic.psnr:+.2f} dB" if bicubic else ""
    steps = f", {row.info['train_steps']} steps" if row.info.get("train_steps") else ""
    fallback = f", fallback: {row.info['fallback']}" if row.info.get("fallback") else ""
    check = row.info.get("self_check") or {}
    if "gain_db" in check:
        fallback += f", held-out gain {check['gain_db']:+.2f} dB, weight {check['weight']:.2f}"
    print(f"{row.image} {row.method}: {row.psnr:.2f} dB / {row.ssim:.4f}{gain}, {row.wall_seconds:.1f} s wall, "
          f"{row.cpu_seconds:.1f} s CPU{steps}{fallback}", file=sys.stderr, flush=True)


def describe_setting(args: argparse.Namespace) -> dict:
    return {"presets": args.preset, "config": str(args.config) if args.config else None, "scale": args.scale,
            "seed": args.seed, "device": args.device or ("cuda" if torch.cuda.is_available() else "cpu"),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(),
            "machine": platform.machine(), "load_average_start": load_average()}


def load_average() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


if __name__ == "__main__":
    sys.exit(main())

"""Blind SR benchmark: KernelGAN's kernel error on photos degraded with random DIV2KRK-style kernels.

  python bench/blind.py                                   # kernel error, x2, five photos + three Set14
  python bench/blind.py --kernel-sweep 100,300,1000,3000  # kernel error against KernelGAN's iteration count
  python bench/blind.py --json                            # the rows as JSON on stdout

Each photo is centre-cropped (--crop, a multiple of the scale), degraded by a random anisotropic Gaussian
kernel drawn with the DIV2KRK recipe (seeded per image, so every run sees the same kernels), rounded to 8 bits,
and KernelGAN estimates the kernel from the low-resolution image alone. Reported per image:
- kernel MSE: mean squared difference of the estimated and true kernels (both centred, zero-padded alike);
- LR PSNR: the high-resolution crop degraded by the estimated kernel against the same crop degraded by the
  true kernel (dB, RGB, [0,1]): how close the estimated degradation is, in image terms; "bicubic" is the same
  figure for the bicubic kernel, the assumption plain ZSSR makes.
Run it niced on a shared machine: `OMP_NUM_THREADS=1 nice -n 10 python bench/blind.py`.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sr import degradations, kernelgan  # noqa: E402

PHOTOS = ("astronaut", "chelsea", "coffee", "camera", "ihc")
SET14_DIR = ROOT.parent.parent / "shared" / "data" / "Set14"
SET14_FALLBACK = Path("/work/shared/data/Set14")
SET14_DEFAULT = ("baboon", "comic", "zebra")


@dataclass(frozen=True)
class Case:
    name: str
    hr: torch.Tensor  # [1,3,H,W] in [0,1], H and W multiples of sf
    kernel: np.ndarray  # the true kernel
    lr: torch.Tensor  # [1,3,H/sf,W/sf], 8-bit values


def load_photo(name: str, crop: int) -> np.ndarray:
    """An RGB uint8 array: a scikit-image photo or a Set14 file, centre-cropped to at most crop x crop."""
    if name in PHOTOS:
        from skimage import data  # bench-only dependency (dev extra)
        array = getattr(data, name)()
    else:
        from PIL import Image
        folder = SET14_DIR if SET14_DIR.is_dir() else SET14_FALLBACK
        array = np.asarray(Image.open(folder / f"{name}.png").convert("RGB"))
    if array.ndim == 2:
        array = np.stack([array] * 3, axis=-1)
    array = array[..., :3]
    height, width = array.shape[:2]
    side_h, side_w = min(crop, height), min(crop, width)
    top, left = (height - side_h) // 2, (width - side_w) // 2
    return array[top:top + side_h, left:left + side_w]


def image_seed(name: str, base_seed: int) -> int:
    """A per-image seed that does not depend on which other images run."""
    return base_seed * 1000 + sum((index + 1) * ord(char) for index, char in enumerate(name))


def make_case(name: str, crop: int, sf: int, base_seed: int) -> Case:
    array = load_photo(name, crop)
    height, width = array.shape[0] // sf * sf, array.shape[1] // sf * sf
    hr = torch.from_numpy(array[:height, :width].copy()).permute(2, 0, 1)[None].float() / 255.0
    kernel = degradations.random_anisotropic_gaussian_kernel(sf, np.random.default_rng(image_seed(name, base_seed)))
    lr = (degradations.degrade_with_kernel(hr, kernel, sf).clamp(0, 1) * 255.0).round() / 255.0
    return Case(name=name, hr=hr, kernel=kernel, lr=lr)


def rgb_psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float(((a - b) ** 2).mean())
    return math.inf if mse == 0 else 10.0 * math.log10(1.0 / mse)


@dataclass(frozen=True)
class KernelRow:
    image: str
    sf: int
    iters: int
    seconds: float
    kernel_mse: float
    lr_psnr_estimated: float
    lr_psnr_bicubic: float


def bicubic_kernel_for(sf: int) -> np.ndarray:
    """The antialiased bicubic kernel at x2; at x4 the same composed twice (what plain ZSSR assumes)."""
    kernel = degradations.center_kernel(kernelgan.bicubic_x2_kernel(), 2)
    return kernel if sf == 2 else kernelgan.x4_kernel_from_x2(kernel)


def kernel_row(case: Case, sf: int, iters: int, seed: int) -> tuple[KernelRow, np.ndarray]:
    start = time.perf_counter()
    estimated = kernelgan.estimate_kernel(case.lr, sf, iters=iters, seed=seed, device="cpu")
    seconds = time.perf_counter() - start
    truth = degradations.degrade_with_kernel(case.hr, case.kernel, sf)
    row = KernelRow(image=case.name, sf=sf, iters=iters, seconds=round(seconds, 1),
                    kernel_mse=float(degradations.kernel_mse(estimated, case.kernel)),
                    lr_psnr_estimated=round(rgb_psnr(degradations.degrade_with_kernel(case.hr, estimated, sf), truth), 2),
                    lr_psnr_bicubic=round(rgb_psnr(degradations.degrade_with_kernel(case.hr, bicubic_kernel_for(sf), sf),
                                                   truth), 2))
    return row, estimated


def print_kernel_table(rows: list[KernelRow]) -> None:
    print("| image | sf | KernelGAN iters | seconds | kernel MSE | LR PSNR estimated k (dB) | LR PSNR bicubic k (dB) |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row.image} | x{row.sf} | {row.iters} | {row.seconds:.1f} | {row.kernel_mse:.2e} | "
              f"{row.lr_psnr_estimated:.2f} | {row.lr_psnr_bicubic:.2f} |")
    by_iters: dict[int, list[KernelRow]] = {}
    for row in rows:
        by_iters.setdefault(row.iters, []).append(row)
    for iters, group in sorted(by_iters.items()):
        print(f"| **mean** | | {iters} | {np.mean([r.seconds for r in group]):.1f} | "
              f"{np.mean([r.kernel_mse for r in group]):.2e} | {np.mean([r.lr_psnr_estimated for r in group]):.2f} | "
              f"{np.mean([r.lr_psnr_bicubic for r in group]):.2f} |")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", default=",".join(PHOTOS + SET14_DEFAULT),
                        help="comma-separated scikit-image photo names and Set14 file stems")
    parser.add_argument("--crop", type=int, default=256, help="high-resolution centre crop side")
    parser.add_argument("--sf", type=int, default=2, choices=(2, 4))
    parser.add_argument("--iters", type=int, default=kernelgan.DEFAULT_ITERS, help="KernelGAN iterations")
    parser.add_argument("--kernel-sweep", default="", help="comma-separated KernelGAN iteration counts to compare")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the machine is shared)")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON instead of a table")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    names = [name for name in args.images.split(",") if name]
    iteration_counts = [int(v) for v in args.kernel_sweep.split(",") if v] or [args.iters]
    rows: list[KernelRow] = []
    for name in names:
        case = make_case(name, args.crop, args.sf, args.seed)
        for iters in iteration_counts:
            row, _ = kernel_row(case, args.sf, iters, args.seed)
            rows.append(row)
            print(f"# {row}", file=sys.stderr, flush=True)
    if args.json:
        print(json.dumps({"kernel": [asdict(row) for row in rows]}, indent=1))
    else:
        print_kernel_table(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Train the kernel prior (sr/kernelprior.py) and write its weights into the package.

  OMP_NUM_THREADS=1 nice -n 10 python scripts/train_kernel_prior.py --sf 2    # writes sr/data/kernel_prior_x2.pt

Training data: crops of the scikit-image photos in TRAIN_IMAGES (none of them is scored by bench/blind.py) and
synthetic dead-leaves images (occluding discs: sharp edges at every scale), each blurred by a random anisotropic
Gaussian (both standard deviations uniform in [MIN_STD, MAX_STD] HR pixels, any angle), subsampled by sf the way
sr/degradations.py does, sometimes given a little Gaussian noise, rounded to 8 bits. A third of the photo crops
are first shrunk by a random factor (a sharper scene), so that the prior does not learn one camera's softness.
The net is told the kernel, never the image: the target is the kernel's log-covariance. Deterministic for a seed
on the CPU (one thread). Needs scikit-image (the dev extra).
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sr import degradations, kernelprior  # noqa: E402

log = logging.getLogger("train_kernel_prior")

# scikit-image's bundled photos that bench/blind.py does not score (astronaut, chelsea, coffee, camera,
# immunohistochemistry, grass and gravel are scored, so they are left out).
TRAIN_IMAGES = ("brick", "cell", "coins", "hubble_deep_field", "moon", "motorcycle_left", "motorcycle_right", "page",
                "retina", "rocket", "text", "horse", "logo", "colorwheel")
MIN_STD, MAX_STD = 0.5, 3.2  # a little wider than the benchmark's 0.7 .. 2.8, so that its ends are not edges here
LR_SIDE = 48  # training crops, low-resolution pixels
DEAD_LEAVES_SHARE = 0.3
SHRUNK_SHARE = 0.33
NOISE_SHARE = 0.25
MAX_NOISE_STD = 0.01


def load_training_images() -> list[np.ndarray]:
    """Luma arrays in [0, 1] (float32)."""
    from skimage import data  # the dev extra: training only

    images = []
    for name in TRAIN_IMAGES:
        if name.startswith("motorcycle"):
            left, right, _ = data.stereo_motorcycle()
            array = left if name.endswith("left") else right
        else:
            array = getattr(data, name)()
        array = np.asarray(array, dtype=np.float32)
        if array.ndim == 3:
            array = array[..., :3] @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        array = array / (255.0 if array.max() > 1.0 else 1.0)
        images.append(array)
    return images


def dead_leaves(rng: np.random.Generator, side: int, supersample: int = 3) -> np.ndarray:
    """Occluding discs of radii 1/r^3-distributed over [2, side / 4], grey levels uniform, antialiased."""
    big = side * supersample
    image = np.full((big, big), rng.uniform(0.2, 0.8), dtype=np.float32)
    r_min, r_max = 2.0 * supersample, side / 4 * supersample
    covered = np.zeros((big, big), dtype=bool)
    for _ in range(2000):  # front to back: a disc only paints what no disc in front of it covers
        radius = 1.0 / math.sqrt(rng.uniform(1 / r_max ** 2, 1 / r_min ** 2))
        center_row, center_col = rng.uniform(0, big, size=2)
        value = rng.uniform(0.05, 0.95)
        top, bottom = max(0, int(center_row - radius)), min(big, int(center_row + radius) + 2)
        left, right = max(0, int(center_col - radius)), min(big, int(center_col + radius) + 2)
        rows, cols = np.ogrid[top:bottom, left:right]
        disc = (rows - center_row) ** 2 + (cols - center_col) ** 2 < radius ** 2
        window = covered[top:bottom, left:right]
        image[top:bottom, left:right][disc & ~window] = value
        window |= disc
        if window.all() and covered.all():
            break
    return image.reshape(side, supersample, side, supersample).mean(axis=(1, 3))


def random_crop(rng: np.random.Generator, image: np.ndarray, side: int) -> np.ndarray:
    height, width = image.shape
    if min(height, width) < side:
        scale = side / min(height, width)
        image = F.interpolate(torch.from_numpy(image)[None, None], scale_factor=scale * 1.01, mode="bicubic",
                              align_corners=False)[0, 0].numpy()
        height, width = image.shape
    top, left = rng.integers(0, height - side + 1), rng.integers(0, width - side + 1)
    crop = image[top:top + side, left:left + side]
    if rng.random() < 0.5:
        crop = crop[::-1]
    if rng.random() < 0.5:
        crop = crop.T
    return np.ascontiguousarray(crop)


def shrunk_crop(rng: np.random.Generator, image: np.ndarray, side: int) -> np.ndarray:
    """A crop of `side` from the image shrunk by a random factor in [1.2, 2.5] (only the crop's region is shrunk)."""
    factor = rng.uniform(1.2, 2.5)
    region = random_crop(rng, image, int(math.ceil(side * factor)))
    tensor = torch.from_numpy(region)[None, None]
    return F.interpolate(tensor, size=(side, side), mode="bicubic", antialias=True, align_corners=False)[0, 0].numpy()


def make_batch(rng: np.random.Generator, photos: list[np.ndarray], leaves: list[np.ndarray], sf: int,
               batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(standardised LR luma [B,1,LR,LR], log-covariance targets [B,3])."""
    inputs, targets = [], []
    hr_side = LR_SIDE * sf
    for _ in range(batch):
        if rng.random() < DEAD_LEAVES_SHARE:
            source = leaves[rng.integers(len(leaves))]
            photo = False
        else:
            photo = True
            source = photos[rng.integers(len(photos))]
        if photo and rng.random() < SHRUNK_SHARE and min(source.shape) > 2.5 * hr_side:
            crop = shrunk_crop(rng, source, hr_side)
        else:
            crop = random_crop(rng, source, hr_side)
        hr = torch.from_numpy(crop)[None, None]
        covariance = kernelprior.random_covariance(rng, MIN_STD, MAX_STD)
        kernel = kernelprior.kernel_from_covariance(covariance, sf)
        lr = degradations.degrade_with_kernel(hr, kernel, sf)
        if rng.random() < NOISE_SHARE:
            lr = lr + torch.from_numpy(rng.standard_normal(lr.shape)).float() * rng.uniform(0, MAX_NOISE_STD)
        lr = (lr.clamp(0, 1) * 255).round() / 255
        inputs.append(lr.float())
        targets.append(torch.from_numpy(kernelprior.log_covariance(covariance)).float())
    return kernelprior.standardise(torch.cat(inputs)), torch.stack(targets)


ENTRY_WEIGHTS = torch.tensor([1.0, 2.0, 1.0])  # the off-diagonal entry counts twice in the Frobenius norm


def train(sf: int, steps: int, batch: int, seed: int, learning_rate: float,
          config: kernelprior.KernelPriorConfig = kernelprior.KernelPriorConfig()
          ) -> tuple[kernelprior.KernelPriorNet, kernelprior.KernelPriorConfig]:
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    photos = load_training_images()
    leaves = [dead_leaves(rng, 256) for _ in range(12)]
    net = kernelprior.KernelPriorNet(config)
    optimizer = torch.optim.Adam(net.parameters(), lr=learning_rate)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=learning_rate, total_steps=steps,
                                                   pct_start=0.1)
    running, started = None, time.monotonic()
    for step in range(1, steps + 1):
        inputs, targets = make_batch(rng, photos, leaves, sf, batch)
        loss = ((net(inputs) - targets) ** 2 * ENTRY_WEIGHTS).sum(1).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        running = float(loss) if running is None else 0.98 * running + 0.02 * float(loss)
        if step % 100 == 0:
            log.info("step %d/%d: loss %.4f (running %.4f), %.0f s", step, steps, float(loss), running,
                     time.monotonic() - started)
    return net.eval(), config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sf", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10000)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--channels", type=int, default=kernelprior.KernelPriorConfig.channels)
    parser.add_argument("--dilations", default=",".join(map(str, kernelprior.KernelPriorConfig.dilations)),
                        help="one 3x3 layer per entry, with that dilation")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (results depend on it)")
    parser.add_argument("--out", type=Path, help="default: sr/data/kernel_prior_x{sf}.pt in this checkout")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    config = kernelprior.KernelPriorConfig(channels=args.channels,
                                           dilations=tuple(int(d) for d in args.dilations.split(",")))
    net, config = train(args.sf, args.steps, args.batch, args.seed, args.lr, config)
    out = args.out or ROOT / "sr" / "data" / kernelprior.WEIGHTS_FILE.format(sf=args.sf)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"config": dataclasses.asdict(config), "sf": args.sf, "steps": args.steps, "seed": args.seed,
                "state": {name: tensor.half() for name, tensor in net.state_dict().items()}}, out)
    log.info("wrote %s (%d bytes)", out, out.stat().st_size)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

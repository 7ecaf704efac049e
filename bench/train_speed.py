"""Training steps per second of `sr` against a naive ZSSR loop, in the same run, at the paper's crop (128, 8x64).

The naive loop is what the seed reproduction does: batch 1, every step a random crop, rotation and flip cut with
Pillow, the lr_son made with Pillow resizes, NumPy -> tensor, NCHW float32, and `.item()` on the loss every step.
`sr` runs its own `train_stage`: fathers from the tensor pool, sons with tensor resizes, the loss kept on the
device. Both see the same image (astronaut, degraded x2 to 256x256) and skip the reconstruction tests (the
naive loop has none), so the figures compare the steps alone. The two loops alternate in rounds, so a busy
machine slows both alike; wall and CPU seconds are both printed. On a machine that other processes keep busy,
use --threads 1: two OpenMP threads on two busy cores spin-wait for each other (measured here under a load
average of 8: 445 ms a step with 2 threads against 36 ms with 1, for the fast preset's net).

    PYTHONPATH=. python bench/train_speed.py [--steps 30] [--rounds 3] [--threads 2]
"""
from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np
import skimage.data
import torch
import torch.nn.functional as F
from PIL import Image

import sr
from sr.augment import FatherPool, FatherSource
from sr.model import ZSSRNet, build_net
from sr.resize import Degradation
from sr.train import ReconstructionTest, StageHooks, new_run, train_stage

SF = (2.0, 2.0)


def low_resolution_photo() -> Image.Image:
    hr = Image.fromarray(skimage.data.astronaut())
    return hr.resize((hr.width // 2, hr.height // 2), Image.Resampling.BICUBIC)


class NaiveLoop:
    """The seed reproduction's step: Pillow crops and resizes, NCHW float32, .item() every step."""

    def __init__(self, image: Image.Image, crop: int, seed: int = 0):
        self.image, self.crop = image, crop
        self.rng = np.random.default_rng(seed)
        torch.manual_seed(seed)
        self.net = ZSSRNet(3, 64, 8)
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=1e-3)

    def step(self) -> float:
        left = int(self.rng.integers(0, self.image.width - self.crop + 1))
        top = int(self.rng.integers(0, self.image.height - self.crop + 1))
        father = self.image.crop((left, top, left + self.crop, top + self.crop))
        father = father.rotate(90 * int(self.rng.integers(0, 4)))
        if self.rng.random() < 0.5:
            father = father.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        son = father.resize((self.crop // 2, self.crop // 2), Image.Resampling.BICUBIC)
        son = son.resize((self.crop, self.crop), Image.Resampling.BICUBIC)
        father_t = torch.from_numpy(np.asarray(father, dtype=np.float32) / 255).permute(2, 0, 1)[None]
        son_t = torch.from_numpy(np.asarray(son, dtype=np.float32) / 255).permute(2, 0, 1)[None]
        loss = F.l1_loss(self.net(son_t), father_t)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return loss.item()  # a host sync every step

    def run(self, steps: int) -> None:
        for _ in range(steps):
            self.step()


class SrLoop:
    """sr's own training loop (train_stage) on the same photo, continued round after round."""

    def __init__(self, image: Image.Image, config: sr.ZSSRConfig, seed: int = 0):
        lr_image = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1)[None].contiguous()
        # No reconstruction tests inside the timed steps (the naive loop has none); the policy never acts.
        self.config = dataclasses.replace(config, run_test_every=10**9, learning_rate_policy_check_every=10**9,
                                          test_crop=32)
        generator = torch.Generator().manual_seed(seed)
        net = build_net(3, self.config, torch.device("cpu"), generator)
        pool = FatherPool([FatherSource(lr_image, 1.0)], self.config, crop_size=self.config.crop_size, max_scale=1.0,
                          rotations=True, axes_may_swap=True, generator=generator)
        self.test = ReconstructionTest(lr_image, SF, Degradation(), self.config, generator)
        self.training = new_run(net, pool, self.config, generator)

    def run(self, steps: int) -> None:
        until = dataclasses.replace(self.config, max_iters=self.training.iteration + steps)
        self.training.finished = False
        train_stage(self.training, self.test, SF, Degradation(), until, StageHooks())


def timed(loop, steps: int) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    loop.run(steps)
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="steps per loop per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    image = low_resolution_photo()
    paper = sr.config_for("paper")
    loops = {
        "naive (seed reproduction, float32 NCHW)": NaiveLoop(image, paper.crop_size),
        "sr paper preset (float32, channels_last)": SrLoop(image, paper),
        "sr paper net, bfloat16 (balanced's precision)": SrLoop(image, dataclasses.replace(paper, precision="bfloat16")),
    }
    for loop in loops.values():
        loop.run(3)  # warm-up: allocator, oneDNN primitives, the first affine bank
    totals = {name: [0.0, 0.0] for name in loops}
    for _ in range(args.rounds):
        for name, loop in loops.items():
            wall, cpu = timed(loop, args.steps)
            totals[name][0] += wall
            totals[name][1] += cpu
    steps = args.steps * args.rounds
    print(f"training steps at crop {paper.crop_size}, net {paper.depth}x{paper.width}, batch 1, "
          f"torch threads {args.threads}, {steps} steps per loop in {args.rounds} alternating rounds")
    naive_wall = totals[next(iter(loops))][0]
    for name, (wall, cpu) in totals.items():
        print(f"  {name:48s} {steps / wall:6.2f} steps/s  ({1000 * wall / steps:6.1f} ms/step wall, "
              f"{1000 * cpu / steps:6.1f} ms CPU)  ratio {naive_wall / wall:.2f}x")


if __name__ == "__main__":
    main()

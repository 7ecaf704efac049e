"""A learnt kernel prior: a small CNN that reads the input's blur off its own pixels.

The benchmark's kernels and most cameras' are close to anisotropic Gaussians, which three numbers describe: the
covariance S (2x2, high-resolution pixels, row/col). The net maps the low-resolution image (luma, standardised)
to a map of guesses of log(S) (the matrix logarithm: three free entries, so that every output is a valid
covariance and errors count relative to the width) and a map of confidences; the image's guess is the
confidence-weighted mean (softmax over positions). Fully convolutional: any input size, one pass.

It is trained (`scripts/train_kernel_prior.py`, one command, a fixed seed, about 20 minutes on one CPU thread) on
crops of scikit-image photos that no benchmark scores, and on synthetic dead-leaves images, each blurred by a
random anisotropic Gaussian, subsampled the way sr/degradations.py does (every sf-th pixel from 0, the kernel's
centre of mass at the aligned centre), rounded to 8 bits, and sometimes given a little noise. So it learns what
KernelGAN cannot see from patch statistics alone: how soft photos usually are, which it would otherwise take for
kernel. The weights ship as package data (sr/data/kernel_prior_x2.pt, about 100 KB); a missing file is a clear
error, nothing is downloaded.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from importlib import resources

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from sr.errors import InvalidInput
from sr.kernelgan import gaussian_kernel

WEIGHTS_FILE = "kernel_prior_x{sf}.pt"


@dataclass(frozen=True)
class KernelPriorConfig:
    channels: int = 32  # hidden channels of every layer
    dilations: tuple[int, ...] = (1, 1, 2, 2, 1)  # one 3x3 layer each: a 15 px receptive field in LR pixels
    border: int = 4  # positions this close to the image's edge take no part in the pooled guess


class KernelPriorNet(nn.Module):
    """[N,1,H,W] standardised luma -> [N,3] log-covariance entries (row-row, row-col, col-col), HR pixels."""

    def __init__(self, config: KernelPriorConfig = KernelPriorConfig()):
        super().__init__()
        layers: list[nn.Module] = []
        channels = 1
        for dilation in config.dilations:
            layers += [nn.Conv2d(channels, config.channels, 3, padding=dilation, dilation=dilation), nn.ReLU()]
            channels = config.channels
        self.body = nn.Sequential(*layers)
        self.head = nn.Conv2d(channels, 4, 1)  # 3 log-covariance entries + 1 confidence logit per position
        self.border = config.border

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        maps = self.head(self.body(image))  # [N,4,H,W]
        b = self.border
        if min(maps.shape[-2:]) > 2 * b + 2:
            maps = maps[..., b:-b, b:-b]
        guesses = maps[:, :3].flatten(2)  # [N,3,P]
        weights = torch.softmax(maps[:, 3].flatten(1), dim=1)  # [N,P]
        return (guesses * weights[:, None]).sum(-1)


def standardise(grey: torch.Tensor) -> torch.Tensor:
    """[N,1,H,W] luma -> zero mean, unit contrast per image (the blur does not depend on exposure or contrast)."""
    mean = grey.mean(dim=(-2, -1), keepdim=True)
    std = grey.std(dim=(-2, -1), keepdim=True)
    return (grey - mean) / (std + 1e-2)


def luma(color: torch.Tensor) -> torch.Tensor:
    """[N,C,H,W] in [0,1] -> [N,1,H,W] luma (BT.601) or the channels' mean."""
    if color.shape[1] == 3:
        weights = torch.tensor([0.299, 0.587, 0.114], dtype=color.dtype, device=color.device)
        return (color * weights.view(1, 3, 1, 1)).sum(1, keepdim=True)
    return color.mean(1, keepdim=True)


def log_covariance(covariance: np.ndarray) -> np.ndarray:
    """The matrix logarithm of a 2x2 SPD matrix as its three entries (00, 01, 11)."""
    values, vectors = np.linalg.eigh(covariance)
    log = vectors @ np.diag(np.log(values)) @ vectors.T
    return np.array([log[0, 0], log[0, 1], log[1, 1]])


def covariance_of(log_entries: np.ndarray) -> np.ndarray:
    """The 2x2 SPD matrix whose matrix logarithm has the entries (00, 01, 11)."""
    log = np.array([[log_entries[0], log_entries[1]], [log_entries[1], log_entries[2]]], dtype=np.float64)
    values, vectors = np.linalg.eigh(log)
    return vectors @ np.diag(np.exp(values)) @ vectors.T


def weights_path(sf: int):
    return resources.files("sr").joinpath("data", WEIGHTS_FILE.format(sf=sf))


@functools.lru_cache(maxsize=4)
def load_prior(sf: int) -> KernelPriorNet:
    """The trained net for `sf` (CPU, eval mode); RuntimeError naming the file and the command if it is missing."""
    path = weights_path(sf)
    if not path.is_file():
        raise RuntimeError(f"the kernel prior's weights sr/data/{WEIGHTS_FILE.format(sf=sf)} are missing from the "
                           f"installed package; train them with `python scripts/train_kernel_prior.py --sf {sf}`")
    with path.open("rb") as handle:
        saved = torch.load(handle, map_location="cpu", weights_only=True)
    net = KernelPriorNet(KernelPriorConfig(**saved["config"]))
    net.load_state_dict({name: tensor.float() for name, tensor in saved["state"].items()})
    return net.eval()


def available_scales() -> tuple[int, ...]:
    return tuple(sf for sf in (2, 3, 4) if weights_path(sf).is_file())


MIN_INPUT_SIDE = 24
# The net's guess is a conditional mean (of log-covariance): where an image says little about the narrow axis, it
# regresses toward the middle of the training range, and a soft photo it never saw reads as blur (chelsea's narrow
# axis about 3x too wide). A kernel too wide costs ZSSR far more than one too narrow (it inverts a blur the image
# never had), so sr/blind.py narrows the guess to the widest that still explains the input (`fit_kernel`).


def estimate_covariance(color: torch.Tensor, sf: int) -> np.ndarray:
    """The kernel's covariance (row, col; HR pixels) the prior reads off `color` [1,C,H,W] in [0,1]."""
    if color.ndim != 4 or min(color.shape[-2:]) < MIN_INPUT_SIDE:
        raise InvalidInput(f"the kernel prior needs an image [1,C,H,W] at least {MIN_INPUT_SIDE} pixels a side")
    net = load_prior(sf)
    with torch.no_grad():
        log_entries = net(standardise(luma(color.detach().float().cpu())))[0].double().numpy()
    return covariance_of(log_entries)


def kernel_from_covariance(covariance: np.ndarray, sf: int, min_side: int = 13) -> np.ndarray:
    """The anisotropic Gaussian of `covariance` (row, col; HR px) centred for `sf` (sr.degradations' convention)."""
    return gaussian_kernel(covariance, sf, min_side=min_side)


def random_covariance(rng: np.random.Generator, min_std: float, max_std: float) -> np.ndarray:
    """An anisotropic Gaussian's covariance (row, col): both standard deviations uniform in [min, max], any angle."""
    stds = rng.uniform(min_std, max_std, size=2)
    angle = rng.uniform(0.0, math.pi)
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    return rotation @ np.diag(stds ** 2) @ rotation.T

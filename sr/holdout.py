"""The self-check on held-out data: what a net does on data it never trained on, against plain cubic.

Why: the reference's test rebuilds the lr image from its own lr_son, but the lr image at its own scale is the
training data (the father pool holds the image itself), so it measures training error: a net that fits a fine
texture passes it and then loses to cubic at the real scale. Holding blocks of the image out of training does not
help (the rest of a texture teaches the same pattern); what decides the output is how the mapping learned at lower
scales transfers to the one scale it never saw. So the check holds out a scale: a probe net of the same shape trains
briefly on fathers downscaled to at most `self_check_probe_scale` of the image (never the image at its own scale),
then rebuilds the lr image from its lr_son. That is a transfer across scales like the real one, scored against data
the probe never trained on.

The figures give the blend weight of the output: the least-squares weight w of the net in w * net + (1 - w) * cubic
on the held-out data, clipped to [0, 1]. A probe whose mapping transfers keeps w near 1; one that overshoots (a
periodic texture, a smooth image it sharpens) gets a lower w, and the output is blended toward cubic by it.

`held_out_figures(rebuild, data)` is the reusable part: any candidate (a net trained under another degradation, an
upscaler with an estimated kernel) can be scored on the same held-out data and compared by `net_mse`.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Callable

import torch

from sr.config import ZSSRConfig
from sr.inference import plan_tiles, run_net_tiled, tile_side
from sr.model import ZSSRNet
from sr.resize import Degradation, son_of

# A measured weight at or above this keeps the net's output as it is: the probe trains far less than the net and reads
# a little low where the net wins (bench/RESULTS.md, issue 17), and a blend just below 1 costs there without helping.
KEEP_NET_WEIGHT = 0.85
DROP_NET_WEIGHT = 0.05  # a measured weight below this is plain cubic
PROBE_SEED_OFFSET = 7919  # the probe's draws come from a generator of its own: the main run's stay as they were


@dataclass(frozen=True)
class HeldOutData:
    """What the check reads: the target (the lr image) and the input (its lr_son, upscaled back)."""

    target: torch.Tensor  # [1,C,H,W]
    son_up: torch.Tensor  # [1,C,H,W] up(down(target)) under the stage's degradation (noise drawn once)


@dataclass(frozen=True)
class HeldOutFigures:
    """The measured figures of one candidate on held-out data (mean squared errors of [0, 1] values)."""

    net_mse: float  # the candidate's rebuild of the target from its lr_son
    cubic_mse: float  # the cubic rebuild (the lr_son upscaled back, unchanged)
    weight: float  # least-squares weight of the candidate in w * candidate + (1 - w) * cubic, clipped to [0, 1]

    @property
    def gain_db(self) -> float:
        """How much better than cubic the candidate rebuilds the target, in dB (negative = worse)."""
        if self.net_mse <= 0 or self.cubic_mse <= 0:
            return math.inf if self.net_mse < self.cubic_mse else 0.0
        return 10 * math.log10(self.cubic_mse / self.net_mse)

    @property
    def blend(self) -> float:
        """The decision: 1.0 keeps the net's output, 0.0 is plain cubic, between is the weight of the net."""
        if self.weight >= KEEP_NET_WEIGHT:
            return 1.0
        return 0.0 if self.weight < DROP_NET_WEIGHT else round(self.weight, 2)


def held_out_data(lr_image: torch.Tensor, sf: tuple[float, float], degradation: Degradation, noise_std: float,
                  generator: torch.Generator) -> HeldOutData:
    """The check's data for one stage: the lr image as the target, its lr_son upscaled back as the input."""
    return HeldOutData(lr_image.float(), son_of(lr_image, sf, degradation, noise_std, generator))


def held_out_figures(rebuild: Callable[[torch.Tensor], torch.Tensor], data: HeldOutData) -> HeldOutFigures:
    """Score a candidate on held-out data: `rebuild` maps data.son_up [1,C,H,W] to its rebuild of data.target
    (for a net: `lambda son_up: net_rebuild(net, son_up, config)`)."""
    with torch.no_grad():
        candidate = rebuild(data.son_up).double()
    target, cubic = data.target.double(), data.son_up.double()
    net_mse = float(torch.mean((candidate - target) ** 2))
    cubic_mse = float(torch.mean((cubic - target) ** 2))
    difference = candidate - cubic
    energy = float((difference ** 2).sum())
    weight = float(((target - cubic) * difference).sum()) / energy if energy > 0 else 0.0
    return HeldOutFigures(net_mse, cubic_mse, min(max(weight, 0.0), 1.0))


@torch.no_grad()
def net_rebuild(net: ZSSRNet, son_up: torch.Tensor, config: ZSSRConfig) -> torch.Tensor:
    """The net's rebuild of an image from its upscaled lr_son, in tiles as inference runs (memory)."""
    was_training = net.training
    net.eval()
    try:
        height, width = son_up.shape[-2:]
        tiles = plan_tiles(height, width, tile_side(config, son_up.shape[1]), net.receptive_radius,
                           net.tile_multiple)
        return run_net_tiled(net, son_up, 0, tiles, config)
    finally:
        net.train(was_training)


def probe_config(config: ZSSRConfig) -> ZSSRConfig:
    """The probe's training: the config's net, steps and policy, `self_check_probe_steps` steps at most, every father
    an affine warp downscaled into [min_scale, 1] * self_check_probe_scale (the dihedral and as-is fathers are the
    image at its own scale, the held-out scale), no checkpoints."""
    return dataclasses.replace(
        config, max_iters=config.self_check_probe_steps, augment_leave_as_is_probability=0.0,
        augment_no_interpolate_probability=0.0,
        augment_min_scale=config.augment_min_scale * config.self_check_probe_scale, checkpoint_every=0,
        crop_size=config.self_check_probe_crop or config.crop_size)

"""The hr_father pool: crops of the image (and of earlier stages' outputs) as they are, under a dihedral transform,
or under a random affine warp with a downscale in [min_scale, 1] (the reference's random_augment).

Everything stays a tensor on the net's device: a crop is tensor indexing, a dihedral transform is rot90/flip, and
the affine fathers are warped `augment_pool_size` at a time with one batched `grid_sample` (each used once, then
the bank is warped anew), so a training step does no per-step Python image work.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from sr.config import ZSSRConfig

ALL_DIHEDRAL = tuple(range(8))
AXIS_PRESERVING = (0, 2, 4, 6)  # no transpose: for per-axis scale factors, whose axes must not swap


def dihedral(image: torch.Tensor, k: int) -> torch.Tensor:
    """The reference's k-th transform of [N,C,H,W]: rot90 by k (k < 4), or rot90 then a left-right mirror."""
    rotated = torch.rot90(image, k % 4, dims=(2, 3))
    return rotated if k < 4 else torch.flip(rotated, dims=(3,))


def undo_dihedral(image: torch.Tensor, k: int) -> torch.Tensor:
    """The inverse of `dihedral(., k)` (mind the opposite order of the mirror and the rotation)."""
    unmirrored = image if k < 4 else torch.flip(image, dims=(3,))
    return torch.rot90(unmirrored, -(k % 4), dims=(2, 3))


def ensemble_transforms(size: int, axes_may_swap: bool) -> list[int]:
    """`size` dihedral transforms spread over those allowed (all 8, or the 4 that keep the axes)."""
    allowed = ALL_DIHEDRAL if axes_may_swap else AXIS_PRESERVING
    size = min(size, len(allowed))
    return list(allowed[:: len(allowed) // size])[:size]


@dataclass(frozen=True, eq=False)
class FatherSource:
    image: torch.Tensor  # [1,C,H,W] on the device
    base_scale: float  # its scale relative to the input (1.0 for the input, a stage's sf for that stage's output)


class FatherPool:
    """Draws batches of hr_father crops [B,C,crop,crop] as the reference's random_augment does."""

    def __init__(self, sources: list[FatherSource], config: ZSSRConfig, *, crop_size: int, max_scale: float,
                 rotations: bool, axes_may_swap: bool, generator: torch.Generator):
        self.sources = sources
        self.config = config
        self.crop_size = crop_size
        self.max_scale = max_scale  # the largest father scale (the latest source's base scale)
        self.rotations = rotations  # dihedral and rotated fathers allowed (the kernel is symmetric)
        self.dihedral_choices = ALL_DIHEDRAL if axes_may_swap else AXIS_PRESERVING
        self.generator = generator  # per-step choices
        self.bank_generator = torch.Generator().manual_seed(int(torch.randint(2**62, (1,), generator=generator)))
        self._bank_state = self.bank_generator.get_state()
        self._bank: torch.Tensor | None = None
        self._cursor = 0

    # --- checkpointed state: the bank is rebuilt from the generator state it was warped with ---
    def state_dict(self) -> dict:
        return {"bank_state": self._bank_state, "cursor": self._cursor, "has_bank": self._bank is not None}

    def load_state_dict(self, state: dict) -> None:
        self.bank_generator.set_state(state["bank_state"])
        self._bank, self._cursor = None, 0
        if state["has_bank"]:
            self._warp_bank()
            self._cursor = state["cursor"]

    def sample(self, batch_size: int) -> torch.Tensor:
        crops = [self._one_father() for _ in range(batch_size)]
        return crops[0] if batch_size == 1 else torch.cat(crops)

    def _uniform(self) -> float:
        return float(torch.rand((), generator=self.generator))

    def _one_father(self) -> torch.Tensor:
        chooser = self._uniform()
        as_is = self.config.augment_leave_as_is_probability
        if chooser < as_is:
            return self._random_crop(self.sources[0].image)
        if chooser < as_is + self.config.augment_no_interpolate_probability:
            source = self.sources[self._source_index(self._random_scale())]
            crop = self._random_crop(source.image)
            if not self.rotations:
                return crop
            k = self.dihedral_choices[int(torch.randint(len(self.dihedral_choices), (), generator=self.generator))]
            return dihedral(crop, k)
        return self._affine_father()

    def _random_scale(self) -> float:
        low = min(self.config.augment_min_scale, self.max_scale)
        return low + self._uniform() * (self.max_scale - low)

    def _source_index(self, scale: float) -> int:
        # The reference: the smallest source whose scale is at least the wanted one
        return next((i for i, s in enumerate(self.sources) if s.base_scale > scale - 1e-6), len(self.sources) - 1)

    def _random_crop(self, image: torch.Tensor) -> torch.Tensor:
        height, width = image.shape[-2:]
        side = self.crop_size
        top = int(torch.randint(height - side + 1, (), generator=self.generator))
        left = int(torch.randint(width - side + 1, (), generator=self.generator))
        return image[:, :, top:top + side, left:left + side]

    def _affine_father(self) -> torch.Tensor:
        if self._bank is None or self._cursor >= self._bank.shape[0]:
            self._bank_state = self.bank_generator.get_state()
            self._warp_bank()
        father = self._bank[self._cursor:self._cursor + 1]
        self._cursor += 1
        return father

    def _warp_bank(self) -> None:
        """`augment_pool_size` affine fathers at once, drawn and warped as batches (one grid_sample per source)."""
        self._cursor = 0
        count, config, gen = self.config.augment_pool_size, self.config, self.bank_generator
        low = min(config.augment_min_scale, self.max_scale)
        scales = low + torch.rand(count, generator=gen, dtype=torch.float64) * (self.max_scale - low)
        sources = [self._source_index(float(scale)) for scale in scales]
        base_scales = torch.tensor([self.sources[i].base_scale for i in sources], dtype=torch.float64)
        father_to_source = self._random_affine_inverses(scales / base_scales)  # [n,2,2]
        side = self.crop_size
        coords = torch.arange(side, dtype=torch.float64) - (side - 1) / 2
        ys, xs = torch.meshgrid(coords, coords, indexing="ij")
        offsets = torch.stack([xs, ys], dim=-1).reshape(1, side * side, 2) @ father_to_source.transpose(1, 2)
        # How far each crop reaches from its centre: the warped corners, |A^-1| (h, h)
        reach = father_to_source.abs() @ torch.full((2, 1), (side - 1) / 2, dtype=torch.float64)  # [n,2,1]
        sizes = torch.tensor([list(self.sources[i].image.shape[-1:-3:-1]) for i in sources],
                             dtype=torch.float64)  # [n,2] (W, H)
        low_centre, high_centre = reach[..., 0], sizes - 1 - reach[..., 0]
        fraction = torch.rand(count, 2, generator=gen, dtype=torch.float64)
        # A crop larger than its image is centred (reflection fills the rest)
        centres = torch.where(high_centre > low_centre, low_centre + fraction * (high_centre - low_centre),
                              (low_centre + high_centre) / 2)
        points = offsets + centres[:, None, :]  # [n, side*side, 2] (x, y) in the source
        # grid_sample's normalised coordinates (align_corners=False): -1 and 1 are the outer pixel edges
        grids = ((2 * points + 1) / sizes[:, None, :] - 1).float().reshape(count, side, side, 2)
        bank = torch.empty(count, self.sources[0].image.shape[1], side, side, device=self.sources[0].image.device)
        for index in sorted(set(sources)):
            members = torch.tensor([n for n, i in enumerate(sources) if i == index])
            bank[members.to(bank.device)] = self._warp(self.sources[index].image, grids[members])
        self._bank = bank

    def _random_affine_inverses(self, scales: torch.Tensor) -> torch.Tensor:
        """[n,2,2] father -> source maps of the reference's warp: scale with an x/y difference and a mirror,
        rotation, shear (source -> father = shear @ rotation @ scale)."""
        count, config, gen = scales.shape[0], self.config, self.bank_generator
        scale_diff = torch.randn(count, generator=gen, dtype=torch.float64) * config.augment_scale_diff_sigma
        mirror = torch.randn(count, generator=gen, dtype=torch.float64).sign()
        theta = torch.rand(count, generator=gen, dtype=torch.float64) * 2 * math.pi
        shear = torch.randn(count, 2, generator=gen, dtype=torch.float64) * config.augment_shear_sigma
        if not self.rotations:
            mirror, theta = torch.ones_like(mirror), torch.zeros_like(theta)
        zeros, ones = torch.zeros_like(scales), torch.ones_like(scales)
        scale_mat = torch.stack([torch.stack([mirror * (scales + scale_diff / 2), zeros], -1),
                                 torch.stack([zeros, scales - scale_diff / 2], -1)], -2)
        cos, sin = theta.cos(), theta.sin()
        rotation = torch.stack([torch.stack([cos, sin], -1), torch.stack([-sin, cos], -1)], -2)
        shear_mat = torch.stack([torch.stack([ones, shear[:, 0]], -1), torch.stack([shear[:, 1], ones], -1)], -2)
        return torch.linalg.inv(shear_mat @ rotation @ scale_mat)

    def _warp(self, image: torch.Tensor, grids: torch.Tensor) -> torch.Tensor:
        """[n,C,crop,crop] fathers from one source: the n grids [n,crop,crop,2] stacked along the height, one
        grid_sample call (batch 1, so the source is never copied n times)."""
        side = self.crop_size
        grid = grids.reshape(1, len(grids) * side, side, 2).to(image.device)
        warped = F.grid_sample(image.float(), grid, mode="bicubic", padding_mode="reflection", align_corners=False)
        channels = image.shape[1]
        # [1,C,n*side,side] -> [n,C,side,side]
        fathers = warped.reshape(channels, len(grids), side, side).permute(1, 0, 2, 3).contiguous()
        return fathers.clamp_(0.0, 1.0)

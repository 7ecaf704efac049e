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


@dataclass(frozen=True)
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
            source = self._source_for(self._random_scale())
            crop = self._random_crop(source.image)
            if not self.rotations:
                return crop
            k = self.dihedral_choices[int(torch.randint(len(self.dihedral_choices), (), generator=self.generator))]
            return dihedral(crop, k)
        return self._affine_father()

    def _random_scale(self) -> float:
        low = min(self.config.augment_min_scale, self.max_scale)
        return low + self._uniform() * (self.max_scale - low)

    def _source_for(self, scale: float) -> FatherSource:
        # The reference: the smallest source whose scale is at least the wanted one
        return next((s for s in self.sources if s.base_scale > scale - 1e-6), self.sources[-1])

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
        """`augment_pool_size` affine fathers at once: one grid_sample per source image."""
        self._cursor = 0
        count = self.config.augment_pool_size
        by_source: dict[int, list[torch.Tensor]] = {}
        order: list[tuple[int, int]] = []
        for _ in range(count):
            scale = self._bank_uniform() * (self.max_scale - min(self.config.augment_min_scale, self.max_scale)) \
                + min(self.config.augment_min_scale, self.max_scale)
            index = self.sources.index(self._source_for(scale))
            grid = self._affine_grid(self.sources[index].image, scale / self.sources[index].base_scale)
            by_source.setdefault(index, []).append(grid)
            order.append((index, len(by_source[index]) - 1))
        warped = {index: self._warp(self.sources[index].image, grids) for index, grids in by_source.items()}
        self._bank = torch.cat([warped[index][position:position + 1] for index, position in order])

    def _bank_uniform(self) -> float:
        return float(torch.rand((), generator=self.bank_generator))

    def _bank_normal(self) -> float:
        return float(torch.randn((), generator=self.bank_generator))

    def _affine_grid(self, image: torch.Tensor, scale: float) -> torch.Tensor:
        """The sampling grid [crop, crop, 2] of one warped father: scale (with an x/y difference and a mirror),
        rotation and shear as in the reference, cropped at a random place inside the warped image."""
        config = self.config
        scale_diff = self._bank_normal() * config.augment_scale_diff_sigma
        reflect = (1.0 if self._bank_normal() >= 0 else -1.0) if self.rotations else 1.0
        theta = self._bank_uniform() * 2 * math.pi if self.rotations else 0.0
        shear_x, shear_y = self._bank_normal() * config.augment_shear_sigma, self._bank_normal() * config.augment_shear_sigma
        scale_mat = torch.tensor([[reflect * (scale + scale_diff / 2), 0.0], [0.0, scale - scale_diff / 2]])
        rotation = torch.tensor([[math.cos(theta), math.sin(theta)], [-math.sin(theta), math.cos(theta)]])
        shear = torch.tensor([[1.0, shear_x], [shear_y, 1.0]])
        source_to_father = shear @ rotation @ scale_mat  # 2x2, (x, y) of the source -> of the father
        father_to_source = torch.linalg.inv(source_to_father.double()).float()
        side = self.crop_size
        coords = torch.arange(side, dtype=torch.float32) - (side - 1) / 2
        ys, xs = torch.meshgrid(coords, coords, indexing="ij")
        offsets = torch.stack([xs, ys], dim=-1) @ father_to_source.T  # [side, side, 2] (x, y) in the source
        height, width = image.shape[-2:]
        reach = offsets.abs().flatten(0, 1).max(0).values  # how far the crop reaches from its centre
        centre_x = self._random_between(reach[0].item(), width - 1 - reach[0].item())
        centre_y = self._random_between(reach[1].item(), height - 1 - reach[1].item())
        points = offsets + torch.tensor([centre_x, centre_y])
        # grid_sample's normalised coordinates (align_corners=False): -1 and 1 are the outer pixel edges
        return torch.stack([(2 * points[..., 0] + 1) / width - 1, (2 * points[..., 1] + 1) / height - 1], dim=-1)

    def _random_between(self, low: float, high: float) -> float:
        if high <= low:  # the warped crop is larger than the image: centre it (reflection fills the rest)
            return (low + high) / 2
        return low + self._bank_uniform() * (high - low)

    def _warp(self, image: torch.Tensor, grids: list[torch.Tensor]) -> torch.Tensor:
        """[n,C,crop,crop] fathers from one source: the n grids stacked along the height, one grid_sample call
        (batch 1, so the source is never copied n times)."""
        side = self.crop_size
        grid = torch.cat(grids, dim=0).reshape(1, len(grids) * side, side, 2).to(image.device)
        warped = F.grid_sample(image.float(), grid, mode="bicubic", padding_mode="reflection", align_corners=False)
        channels = image.shape[1]
        # [1,C,n*side,side] -> [n,C,side,side]
        fathers = warped.reshape(channels, len(grids), side, side).permute(1, 0, 2, 3).contiguous()
        return fathers.clamp_(0.0, 1.0)

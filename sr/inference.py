"""Inference: the net over the cubic pre-upsample in overlapping tiles, the geometric self-ensemble with a
per-pixel median, and back-projection. Stateless: every function takes what it needs.

Tiles: each tile is run with a margin of at least the net's receptive radius (one pixel per 3x3 layer) on every
side that is not the image border, and only its core is kept ("crop-out" blending). A core pixel then sees
exactly the context it would see in one untiled pass, so the tiled output equals the untiled one to float
tolerance and no seam can appear. The tile side follows from `inference_memory_mb`. An error inside a tile
propagates: a tile is never skipped.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from sr.augment import dihedral, undo_dihedral
from sr.config import ZSSRConfig
from sr.errors import Cancelled
from sr.model import ZSSRNet, autocast_for, prepare_input
from sr.resize import Degradation, cubic_resize

ACTIVATION_COPIES = 4  # live activation tensors of the widest layer during a no-grad forward (in, out, scratch)
MIN_TILE_CORE = 16
LARGE_OUTPUT_VALUES = 1 << 26  # above this many output values, ensemble passes are kept in float16 (memory)


@dataclass(frozen=True)
class Tile:
    """A core box [top:bottom, left:right] and the padded box the net runs on (core + margin, inside the image)."""

    top: int
    left: int
    bottom: int
    right: int
    pad_top: int
    pad_left: int
    pad_bottom: int
    pad_right: int


def tile_side(config: ZSSRConfig, channels: int) -> int:
    """The side of a padded tile whose activations fit in inference_memory_mb."""
    bytes_per_pixel = 4 * ACTIVATION_COPIES * max(config.width, channels)
    return max(1, int(math.sqrt(config.inference_memory_mb * 2**20 / bytes_per_pixel)))


def plan_tiles(height: int, width: int, side: int, margin: int, multiple: int = 1) -> list[Tile]:
    """Cores covering the image exactly once, each with `margin` pixels of context where the image has them.
    Corners sit on multiples of `multiple` (arch="post" nets work on a pixel-unshuffle grid)."""
    margin = -(-margin // multiple) * multiple
    core = max(MIN_TILE_CORE, side - 2 * margin)
    core = max(multiple, core // multiple * multiple)
    tiles = []
    for top in range(0, height, core):
        for left in range(0, width, core):
            bottom, right = min(top + core, height), min(left + core, width)
            tiles.append(Tile(top, left, bottom, right, max(0, top - margin), max(0, left - margin),
                              min(height, bottom + margin), min(width, right + margin)))
    return tiles


@torch.no_grad()
def run_net_tiled(net: ZSSRNet, up_image: torch.Tensor, k: int, tiles: list[Tile], config: ZSSRConfig, *,
                  should_stop: Callable[[], bool] = lambda: False,
                  on_tile: Callable[[], None] = lambda: None) -> torch.Tensor:
    """undo_dihedral(net(dihedral(up_image, k)), k), computed tile by tile -> [1,C,H,W] float32 on the device."""
    output = torch.empty_like(up_image, dtype=torch.float32)
    device = up_image.device
    for tile in tiles:
        if should_stop():
            raise Cancelled()
        padded = up_image[:, :, tile.pad_top:tile.pad_bottom, tile.pad_left:tile.pad_right]
        with autocast_for(config, device):
            result = net(prepare_input(dihedral(padded, k), config))
        result = undo_dihedral(result.float(), k)
        top, left = tile.top - tile.pad_top, tile.left - tile.pad_left
        output[:, :, tile.top:tile.bottom, tile.left:tile.right] = \
            result[:, :, top:top + tile.bottom - tile.top, left:left + tile.right - tile.left]
        on_tile()
    return output


def back_projection(sr_image: torch.Tensor, lr_image: torch.Tensor, sf: tuple[float, float],
                    degradation: Degradation, iterations: int) -> torch.Tensor:
    """`iterations` times: sr += up(lr - down(sr)), clipped to [0, 1] (the reference's back_projection)."""
    size = tuple(sr_image.shape[-2:])
    for _ in range(iterations):
        residual = lr_image - degradation.downscale(sr_image, tuple(lr_image.shape[-2:]), sf)
        sr_image = (sr_image + cubic_resize(residual, size)).clamp_(0.0, 1.0)
    return sr_image


def median_of(passes: list[torch.Tensor], rows_per_chunk: int = 256) -> torch.Tensor:
    """Per-pixel median of [1,C,H,W] tensors; for an even count the mean of the two middle values (np.median).
    Computed a band of rows at a time so the sorted copy stays small."""
    if len(passes) == 1:
        return passes[0].float()
    height = passes[0].shape[-2]
    result = torch.empty_like(passes[0], dtype=torch.float32)
    middle = len(passes) // 2
    for top in range(0, height, rows_per_chunk):
        band = torch.stack([p[:, :, top:top + rows_per_chunk].float() for p in passes])  # [P,1,C,h,W]
        ordered = band.sort(dim=0).values
        if len(passes) % 2:
            result[:, :, top:top + rows_per_chunk] = ordered[middle]
        else:
            result[:, :, top:top + rows_per_chunk] = (ordered[middle - 1] + ordered[middle]) / 2
    return result


def super_resolve(net: ZSSRNet, lr_image: torch.Tensor, sf: tuple[float, float], size: tuple[int, int],
                  degradation: Degradation, config: ZSSRConfig, *, transforms: list[int], back_projection_iters: int,
                  should_stop: Callable[[], bool] = lambda: False,
                  on_tile: Callable[[int, int], None] = lambda done, total: None) -> torch.Tensor:
    """The reference's final_test: for each transform, the net's output (back-projected), the median of them,
    back-projected again -> [1,C,*size] float32 in [0, 1]."""
    net.eval()
    up_image = cubic_resize(lr_image, size)
    tiles = plan_tiles(size[0], size[1], tile_side(config, lr_image.shape[1]), net.receptive_radius,
                       net.tile_multiple)
    total = len(tiles) * len(transforms)
    done = 0

    def tile_done() -> None:
        nonlocal done
        done += 1
        on_tile(done, total)

    keep_dtype = torch.float16 if up_image.numel() * len(transforms) > LARGE_OUTPUT_VALUES else torch.float32
    passes = []
    for k in transforms:
        output = run_net_tiled(net, up_image, k, tiles, config, should_stop=should_stop, on_tile=tile_done)
        output.clamp_(0.0, 1.0)  # the reference clips each forward pass
        passes.append(back_projection(output, lr_image, sf, degradation, back_projection_iters).to(keep_dtype))
    del up_image
    fused = median_of(passes)
    del passes
    return back_projection(fused, lr_image, sf, degradation, back_projection_iters)

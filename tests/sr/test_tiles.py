from __future__ import annotations

import dataclasses

import pytest
import torch

import sr
from sr.config import ZSSRConfig
from sr.inference import plan_tiles, run_net_tiled, super_resolve, tile_side
from sr.model import PostUpsamplingNet, ZSSRNet
from sr.resize import Degradation
from sr.train import ReconstructionTest


def test_tiles_cover_the_image_exactly_once_with_margins_inside_it():
    covered = torch.zeros(50, 37, dtype=torch.int32)
    for tile in plan_tiles(50, 37, side=30, margin=4):
        covered[tile.top:tile.bottom, tile.left:tile.right] += 1
        assert 0 <= tile.pad_top <= tile.top and tile.bottom <= tile.pad_bottom <= 50
        assert tile.pad_top >= tile.top - 4 and tile.pad_bottom <= tile.bottom + 4
    assert torch.equal(covered, torch.ones_like(covered))


def test_the_tile_side_follows_the_memory_budget():
    small, large = ZSSRConfig(inference_memory_mb=16), ZSSRConfig(inference_memory_mb=1024)
    assert tile_side(small, 3) < tile_side(large, 3)
    assert tile_side(small, 3) ** 2 * 64 * 4 <= 16 * 2**20


def test_the_tiled_output_equals_the_untiled_output():
    torch.manual_seed(0)
    net = ZSSRNet(3, width=8, depth=4, init_variance=1.0).eval()
    lr_image = torch.rand(1, 3, 40, 33)
    config = ZSSRConfig(width=8, depth=4, inference_memory_mb=16)
    size = (80, 66)
    untiled = super_resolve(net, lr_image, (2.0, 2.0), size, Degradation(), config, transforms=[0, 1, 6],
                            back_projection_iters=2)
    tiled_config = dataclasses.replace(config, width=100_000)  # the budget now buys tiles of a few pixels
    assert len(plan_tiles(*size, tile_side(tiled_config, 3), net.receptive_radius)) > 4
    tiled = super_resolve(net, lr_image, (2.0, 2.0), size, Degradation(), tiled_config, transforms=[0, 1, 6],
                          back_projection_iters=2)
    assert torch.allclose(tiled, untiled, atol=1e-5)


class FailingNet(ZSSRNet):
    def __init__(self, fail_at: int):
        super().__init__(1, width=4, depth=2)
        self.calls, self.fail_at = 0, fail_at

    def forward(self, image):
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError("boom in a tile")
        return super().forward(image)


def test_the_reconstruction_test_rebuilds_tiled_as_untiled_with_a_post_upsampling_net():
    # arch="post" nets work on a pixel-unshuffle grid: tile corners off it change the rebuild
    torch.manual_seed(0)
    net = PostUpsamplingNet(3, factor=2, width=8, depth=3, init_variance=1.0).eval()
    config = ZSSRConfig(width=8, depth=3, inference_memory_mb=16, test_crop=0, noise_std=0.0)
    test = ReconstructionTest(torch.rand(1, 3, 45, 38), (2.0, 2.0), Degradation(), config, torch.Generator())
    untiled = test.rebuild(net)
    test.config = dataclasses.replace(config, width=750)  # tiles of a 21-pixel core: odd, off the 2x2 grid
    assert len(plan_tiles(45, 38, tile_side(test.config, 3), net.receptive_radius, net.tile_multiple)) > 4
    with torch.no_grad():
        assert torch.allclose(test.rebuild(net), untiled, atol=1e-5)
        assert torch.allclose(untiled, net(test.son_up), atol=1e-5)


def test_an_error_inside_a_tile_fails_the_call():
    tiles = plan_tiles(60, 60, side=20, margin=2)
    with pytest.raises(RuntimeError, match="boom in a tile"):
        run_net_tiled(FailingNet(fail_at=3), torch.rand(1, 1, 60, 60), 0, tiles, ZSSRConfig())


def test_a_stop_between_tiles_raises_cancelled():
    tiles = plan_tiles(60, 60, side=20, margin=2)
    done = []
    with pytest.raises(sr.Cancelled):
        run_net_tiled(FailingNet(fail_at=-1), torch.rand(1, 1, 60, 60), 0, tiles, ZSSRConfig(),
                      should_stop=lambda: len(done) >= 2, on_tile=lambda: done.append(1))
    assert len(done) == 2

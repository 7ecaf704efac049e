from __future__ import annotations

import torch
from torch import nn

from sr.config import ZSSRConfig
from sr.inference import back_projection, median_of, run_net_tiled, super_resolve, plan_tiles
from sr.model import ZSSRNet
from sr.resize import Degradation, cubic_resize

CONFIG = ZSSRConfig(width=8, depth=3, inference_memory_mb=16)


def identity_net() -> ZSSRNet:
    net = ZSSRNet(3, width=8, depth=3)
    with torch.no_grad():
        for conv in net.body:
            if isinstance(conv, nn.Conv2d):
                conv.weight.zero_()  # the residual is zero: net(x) = x
    return net


def test_the_self_ensemble_undoes_its_transforms():
    lr_image = torch.rand(1, 3, 12, 9)
    size = (24, 18)
    output = super_resolve(identity_net(), lr_image, (2.0, 2.0), size, Degradation(), CONFIG,
                           transforms=list(range(8)), back_projection_iters=0)
    assert torch.allclose(output, cubic_resize(lr_image, size).clamp(0, 1), atol=1e-6)


def test_each_pass_is_the_net_on_the_transformed_image_transformed_back():
    torch.manual_seed(0)
    net = ZSSRNet(3, width=8, depth=3, init_variance=2.0).eval()
    up = torch.rand(1, 3, 20, 14)
    tiles = plan_tiles(20, 14, side=100, margin=3)
    for k in (1, 5):  # a rotation; a rotation then a mirror
        transformed = torch.rot90(up, k % 4, (2, 3))
        transformed = transformed.flip(3) if k >= 4 else transformed
        with torch.no_grad():
            output = net(transformed)
        output = output.flip(3) if k >= 4 else output
        expected = torch.rot90(output, -(k % 4), (2, 3))
        assert torch.allclose(run_net_tiled(net, up, k, tiles, CONFIG), expected, atol=1e-6)


def test_back_projection_brings_the_downscaled_result_toward_the_input():
    torch.manual_seed(0)
    lr_image = torch.rand(1, 3, 16, 16) * 0.8 + 0.1
    sr_image = (cubic_resize(lr_image, (32, 32)) + 0.05 * torch.randn(1, 3, 32, 32)).clamp(0, 1)

    def error(image):
        return float((Degradation().downscale(image, (16, 16), (2.0, 2.0)) - lr_image).abs().mean())

    errors = [error(back_projection(sr_image, lr_image, (2.0, 2.0), Degradation(), n)) for n in (0, 1, 5)]
    assert errors[0] > errors[1] > errors[2] and errors[2] < errors[0] / 3


def test_the_median_of_an_even_count_is_the_mean_of_the_middle_two():
    passes = [torch.full((1, 1, 3, 2), value) for value in (4.0, 1.0, 3.0, 2.0)]
    assert torch.equal(median_of(passes, rows_per_chunk=2), torch.full((1, 1, 3, 2), 2.5))
    assert torch.equal(median_of(passes[:3]), torch.full((1, 1, 3, 2), 3.0))

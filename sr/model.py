"""The ZSSR net: `depth` 3x3 convolutions without biases, ReLU between them, learning the residual over its input."""
from __future__ import annotations

import math
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import nn

from sr.config import ZSSRConfig


def conv_body(channels: int, width: int, depth: int, device: torch.device | str | None) -> nn.Sequential:
    """`depth` 3x3 convolutions without biases, channels -> width ... width -> channels, ReLU between them."""
    sizes = [channels] + [width] * (depth - 1) + [channels]
    layers: list[nn.Module] = []
    for index, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Conv2d(fan_in, fan_out, kernel_size=3, padding=1, bias=False, device=device))
        if index < depth - 1:
            layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class ZSSRNet(nn.Module):
    """prediction = up_image + body(up_image), where up_image is the cubic pre-upsample ([N,C,H,W])."""

    def __init__(self, channels: int, width: int = 64, depth: int = 8, init_variance: float = 0.1,
                 device: torch.device | str | None = None, generator: torch.Generator | None = None):
        super().__init__()
        self.body = conv_body(channels, width, depth, device)
        self.depth = depth
        self.reset_parameters(init_variance, generator)

    @torch.no_grad()
    def reset_parameters(self, init_variance: float, generator: torch.Generator | None = None) -> None:
        # The reference: N(0, sqrt(init_variance / fan_in)), fan_in = 3 * 3 * input channels. Drawn on the CPU
        # from `generator`, so one seed gives one net on every device.
        for conv in self.body:
            if isinstance(conv, nn.Conv2d):
                fan_in = conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1]
                weights = torch.randn(conv.weight.shape, generator=generator) * math.sqrt(init_variance / fan_in)
                conv.weight.copy_(weights)

    @property
    def receptive_radius(self) -> int:
        """Pixels of context each side that one output pixel depends on (one per 3x3 layer)."""
        return self.depth

    @property
    def tile_multiple(self) -> int:
        """Tile corners must sit on multiples of this (1: anywhere)."""
        return 1

    def forward(self, up_image: torch.Tensor) -> torch.Tensor:
        # The residual sum is kept in float32 even when the body runs under bfloat16 autocast.
        return up_image + self.body(up_image).float()


class PostUpsamplingNet(ZSSRNet):
    """arch="post": the same residual over the cubic pre-upsample, but the convolutions run at the lr_son's size.

    The pre-upsample [N,C,H,W] is pixel-unshuffled by the integer factor r into [N,C*r*r,H/r,W/r] (for an integer
    sf that is the son's grid: the cubic upsample is a fixed linear function of the son, so no information is added
    or lost), `depth` 3x3 convolutions of `width` channels run there, the last one gives C*r*r channels and a pixel
    shuffle puts them back at full size. Same width and depth as the reference net, r^2 fewer pixels per layer.
    Sizes that are not multiples of r are padded (edge replicated) and cropped back.
    """

    def __init__(self, channels: int, factor: int, width: int = 64, depth: int = 8, init_variance: float = 0.1,
                 device: torch.device | str | None = None, generator: torch.Generator | None = None):
        nn.Module.__init__(self)  # not ZSSRNet's: the layer sizes differ
        self.factor = factor
        self.body = conv_body(channels * factor * factor, width, depth, device)
        self.depth = depth
        self.reset_parameters(init_variance, generator)

    @property
    def receptive_radius(self) -> int:
        # One low-resolution pixel per layer is `factor` output pixels, plus the unshuffle's phase: a multiple of
        # the factor, so that tile corners stay on the unshuffle grid (tiled == untiled).
        return (self.depth + 1) * self.factor

    @property
    def tile_multiple(self) -> int:
        return self.factor

    def forward(self, up_image: torch.Tensor) -> torch.Tensor:
        height, width = up_image.shape[-2:]
        r = self.factor
        pad_h, pad_w = -height % r, -width % r
        padded = F.pad(up_image, (0, pad_w, 0, pad_h), mode="replicate") if pad_h or pad_w else up_image
        residual = F.pixel_shuffle(self.body(F.pixel_unshuffle(padded, r)), r)  # [N,C*r*r,H/r,W/r] -> [N,C,H,W]
        return up_image + residual[..., :height, :width].float()


def post_upsampling_factor(sf: tuple[float, float]) -> int:
    """The integer factor of arch="post": floor of the smaller scale factor, at least 1."""
    return max(1, int(math.floor(min(sf) + 1e-9)))


def build_net(channels: int, config: ZSSRConfig, device: torch.device,
              generator: torch.Generator | None = None, sf: tuple[float, float] = (1.0, 1.0)) -> ZSSRNet:
    """The net on `device`, in the config's memory format. An allocation failure is torch's own error.
    `sf` (the target scale) sets arch="post"'s pixel-shuffle factor; the reference net does not use it."""
    if config.arch == "post":
        net = PostUpsamplingNet(channels, post_upsampling_factor(sf), config.width, config.depth,
                                config.init_variance, device=device, generator=generator)
    else:
        net = ZSSRNet(channels, config.width, config.depth, config.init_variance, device=device, generator=generator)
    if config.channels_last:
        net = net.to(memory_format=torch.channels_last)
    return net


def autocast_for(config: ZSSRConfig, device: torch.device):
    """bfloat16 autocast for the convolutions when the config asks for it; a no-op context otherwise."""
    if config.precision == "bfloat16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return nullcontext()


def prepare_input(image: torch.Tensor, config: ZSSRConfig) -> torch.Tensor:
    """The net's input in the config's memory format."""
    return image.contiguous(memory_format=torch.channels_last) if config.channels_last else image

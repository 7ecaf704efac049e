"""The ZSSR net: `depth` 3x3 convolutions without biases, ReLU between them, learning the residual over its input."""
from __future__ import annotations

import math
from contextlib import nullcontext

import torch
from torch import nn

from sr.config import ZSSRConfig


class ZSSRNet(nn.Module):
    """prediction = up_image + body(up_image), where up_image is the cubic pre-upsample ([N,C,H,W])."""

    def __init__(self, channels: int, width: int = 64, depth: int = 8, init_variance: float = 0.1,
                 device: torch.device | str | None = None, generator: torch.Generator | None = None):
        super().__init__()
        sizes = [channels] + [width] * (depth - 1) + [channels]
        layers: list[nn.Module] = []
        for index, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers.append(nn.Conv2d(fan_in, fan_out, kernel_size=3, padding=1, bias=False, device=device))
            if index < depth - 1:
                layers.append(nn.ReLU(inplace=True))
        self.body = nn.Sequential(*layers)
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

    def forward(self, up_image: torch.Tensor) -> torch.Tensor:
        # The residual sum is kept in float32 even when the body runs under bfloat16 autocast.
        return up_image + self.body(up_image).float()


def build_net(channels: int, config: ZSSRConfig, device: torch.device,
              generator: torch.Generator | None = None) -> ZSSRNet:
    """The net on `device`, in the config's memory format. An allocation failure is torch's own error."""
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

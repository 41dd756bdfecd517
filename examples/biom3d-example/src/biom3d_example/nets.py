"""The example network. torch is imported here, when a run builds the model."""

from __future__ import annotations

import torch
from torch import nn


def build_tiny_unet(params, ctx) -> nn.Module:
    return TinyUNet(ctx.in_channels, ctx.out_channels, params.features, params.levels)


class TinyUNet(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, features: int, levels: int):
        super().__init__()
        chans = [features * 2**i for i in range(levels + 1)]
        self.down = nn.ModuleList()
        prev = in_channels
        for c in chans:
            self.down.append(_block(prev, c))
            prev = c
        self.pool = nn.MaxPool3d(2)
        self.up = nn.ModuleList(nn.ConvTranspose3d(chans[i + 1], chans[i], 2, stride=2) for i in range(levels))
        self.dec = nn.ModuleList(_block(2 * chans[i], chans[i]) for i in range(levels))
        self.head = nn.Conv3d(chans[0], out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.down):
            x = block(x)
            if i < len(self.down) - 1:
                skips.append(x)
                x = self.pool(x)
        for up, dec in zip(reversed(self.up), reversed(self.dec), strict=True):
            x = dec(torch.cat([up(x), skips.pop()], dim=1))
        return self.head(x)


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv3d(cin, cout, 3, padding=1), nn.InstanceNorm3d(cout, affine=True), nn.LeakyReLU(0.01, inplace=True)
    )

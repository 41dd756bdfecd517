"""The model (:class:`biom3d.core.protocols.Model`): (B, in_channels, D, H, W) float32 -> (B, out_channels, D, H, W)
logits. torch is imported here, when a run builds the model, never at discovery."""

from __future__ import annotations

import torch
from torch import nn


def build_model(params, ctx) -> TinyConvNet:
    # ctx.out_channels: num_classes + 1 under softmax, num_classes when multi-label
    return TinyConvNet(ctx.in_channels, ctx.out_channels, params.features, params.levels)


class TinyConvNet(nn.Module):
    """An encoder-decoder with ``levels`` 2x poolings and skip connections; patches must be divisible by
    ``2 ** levels`` (the params validator checks the run's patch_size)."""

    deep_supervision = False  # one output: the loss gets a tensor, not a list

    def __init__(self, in_channels: int, out_channels: int, features: int = 8, levels: int = 1):
        super().__init__()
        chans = [features * 2**i for i in range(levels + 1)]
        self.down = nn.ModuleList(_block(c_in, c_out) for c_in, c_out in zip([in_channels, *chans], chans, strict=False))
        self.pool = nn.MaxPool3d(2)
        self.up = nn.ModuleList(nn.ConvTranspose3d(chans[i + 1], chans[i], 2, stride=2) for i in range(levels))
        self.dec = nn.ModuleList(_block(2 * chans[i], chans[i]) for i in range(levels))
        self.head = nn.Conv3d(chans[0], out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for block in self.down[:-1]:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        x = self.down[-1](x)
        for up, dec in zip(reversed(self.up), reversed(self.dec), strict=True):
            x = dec(torch.cat([up(x), skips.pop()], dim=1))
        return self.head(x)


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv3d(c_in, c_out, 3, padding=1), nn.InstanceNorm3d(c_out, affine=True),
                         nn.LeakyReLU(0.01, inplace=True))

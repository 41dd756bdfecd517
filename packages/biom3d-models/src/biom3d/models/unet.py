"""The dynamic 3D U-Net: any encoder of :mod:`biom3d.models.encoders`, a decoder that adapts to it, and
optional deep supervision."""

from __future__ import annotations

import math

import torch
from torch import nn

from biom3d.core.context import RunContext
from biom3d.core.geometry import pool_strides
from biom3d.models.blocks import VGGBlock, init_weights
from biom3d.models.encoders import Encoder, build_encoder

DEFAULT_POOLS = (5, 5, 5)


def build_unet(params, ctx) -> UNet:
    """Factory of ``unet3d-vgg-deep`` and ``effunet3d`` (params: ``UNetParams``)."""
    ctx = ctx if ctx is not None else RunContext()
    in_channels = params.in_channels or ctx.in_channels
    encoder = build_encoder(params.encoder, in_channels, strides_for(params, ctx), params)
    out_channels = params.out_channels or ctx.out_channels
    return UNet(encoder, out_channels, params.deep_supervision, params.norm, params.negative_slope)


class UNet(nn.Module):
    """Encoder, then per level up: transposed conv (kernel = stride), concatenation with the skip, VGG block.

    In training mode with ``deep_supervision`` the forward returns one logits tensor per decoder stage, full
    resolution first then each lower stage (nnU-Net's convention: a head at every decoder stage; the loss
    decides how much each counts). Otherwise, and always in eval mode, it returns the full-resolution logits.
    The branch depends on module state only, never on data, so the eval-mode graph traces and exports.
    """

    def __init__(
        self,
        encoder: Encoder,
        out_channels: int,
        deep_supervision: bool = False,
        norm: str = "instance",
        negative_slope: float = 0.01,
    ):
        super().__init__()
        self.encoder = encoder
        self.deep_supervision = deep_supervision
        chans, strides = encoder.channels, encoder.strides
        below = range(len(chans) - 1, 0, -1)  # decoder stage i rebuilds level i - 1 from level i
        self.ups = nn.ModuleList(
            nn.ConvTranspose3d(chans[i], chans[i - 1], strides[i], stride=strides[i]) for i in below
        )
        self.blocks = nn.ModuleList(VGGBlock(2 * chans[i - 1], chans[i - 1], 1, norm, negative_slope) for i in below)
        self.head = nn.Conv3d(chans[0], out_channels, 1)
        # one extra head per lower decoder stage, lowest first; none without deep supervision (no unused weights)
        aux = [nn.Conv3d(chans[i - 1], out_channels, 1) for i in below][:-1] if deep_supervision else []
        self.aux_heads = nn.ModuleList(aux)
        init_weights(self.ups, negative_slope)
        init_weights(self.head, negative_slope)
        init_weights(self.aux_heads, negative_slope)

    @property
    def total_stride(self) -> tuple[int, int, int]:
        """Input sizes must be multiples of this for the output to match the input size."""
        return tuple(math.prod(s[a] for s in self.encoder.strides) for a in range(3))  # type: ignore[return-value]

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        skips = self.encoder(x)
        x = skips[-1]
        supervise = self.training and self.deep_supervision
        outputs: list[torch.Tensor] = []
        for i, (up, block) in enumerate(zip(self.ups, self.blocks, strict=True)):
            x = block(torch.cat([up(x), skips[-2 - i]], dim=1))
            if supervise and i < len(self.aux_heads):
                outputs.append(self.aux_heads[i](x))
        logits = self.head(x)
        if supervise:
            return [logits, *outputs[::-1]]
        return logits


def strides_for(params, ctx) -> list[tuple[int, int, int]]:
    """Per-stage pooling kernels from ``params.num_pools``, else the run's ``num_pools``, else (5, 5, 5)."""
    pools = params.num_pools or getattr(ctx, "num_pools", None) or DEFAULT_POOLS
    if len(pools) != 3:
        raise ValueError(f"num_pools {list(pools)} must give 3 values (D, H, W) for a 3D network")
    return pool_strides(pools)  # type: ignore[return-value]

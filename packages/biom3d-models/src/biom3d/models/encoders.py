"""Encoders: modules that return one feature map per level, full resolution first.

Every encoder exposes ``channels`` (features per level) and ``strides`` (each level's down-sampling relative to
the previous one; level 0 is (1, 1, 1)), so that a decoder or a classifier head can adapt to any of them.
Down-sampling follows the per-stage kernels of auto-configuration (:func:`biom3d.core.geometry.pool_strides`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

from biom3d.models.blocks import ConvNormAct, MBConv, VGGBlock, init_weights

Strides = Sequence[tuple[int, int, int]]


def build_encoder(name: str, in_channels: int, strides: Strides, params) -> Encoder:
    """The encoder ``name`` (an ``ENCODERS`` key) for these strides; ``params`` is an ``EncoderParams``."""
    try:
        factory = ENCODERS[name]
    except KeyError:
        raise ValueError(f"unknown encoder {name!r}; expected one of {', '.join(ENCODERS)}") from None
    return factory(in_channels, strides, params)


class Encoder(nn.Module):
    """Base class: ``forward(x) -> [level 0, ..., level L]`` with ``channels`` and ``strides`` per level."""

    channels: list[int]
    strides: list[tuple[int, int, int]]

    def __init__(self, levels: Sequence[nn.Module], channels: Sequence[int], strides: Strides):
        super().__init__()
        self.levels = nn.ModuleList(levels)
        self.channels = list(channels)
        self.strides = [(1, 1, 1), *(tuple(s) for s in strides)]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for level in self.levels:
            x = level(x)
            features.append(x)
        return features


class VGGEncoder(Encoder):
    """One VGG block per level; features double per level from ``base`` up to ``cap`` (nnU-Net: 32 -> 320)."""

    def __init__(
        self,
        in_channels: int,
        strides: Strides,
        base: int = 32,
        cap: int = 320,
        norm: str = "instance",
        negative_slope: float = 0.01,
    ):
        channels = [min(base * 2**i, cap) for i in range(len(strides) + 1)]
        levels = [
            VGGBlock(cin, cout, stride, norm, negative_slope)
            for cin, cout, stride in zip([in_channels, *channels[:-1]], channels, [1, *strides], strict=True)
        ]
        super().__init__(levels, channels, strides)
        init_weights(self, negative_slope)


# EfficientNet-B0's MBConv stages (expand ratio, kernel, channels, repeats), grouped by the down-sampling that
# opens them. The stem runs at full resolution (a U-Net needs level-0 features), so each level starts with the
# stride the original net had one stage earlier.
EFFICIENTNET_STEM = 32
EFFICIENTNET_LEVELS: list[list[tuple[int, int, int, int]]] = [
    [(1, 3, 16, 1)],
    [(6, 3, 24, 2)],
    [(6, 5, 40, 2)],
    [(6, 3, 80, 3), (6, 5, 112, 3)],
    [(6, 5, 192, 4), (6, 3, 320, 1)],
]
# (width, depth) multipliers of the compound scaling (Tan & Le, 2019).
EFFICIENTNET_SCALES = {
    "efficientnet-b0": (1.0, 1.0),
    "efficientnet-b1": (1.0, 1.1),
    "efficientnet-b2": (1.1, 1.2),
    "efficientnet-b3": (1.2, 1.4),
    "efficientnet-b4": (1.4, 1.8),
    "efficientnet-b5": (1.6, 2.2),
    "efficientnet-b6": (1.8, 2.6),
    "efficientnet-b7": (2.0, 3.1),
}


class EfficientNetEncoder(Encoder):
    """3D EfficientNet: a full-resolution stem, then MBConv stages with squeeze-excitation.

    Levels beyond B0's five repeat its last stage, so any pooling depth works.
    """

    def __init__(
        self, in_channels: int, strides: Strides, width: float = 1.0, depth: float = 1.0, norm: str = "instance"
    ):
        stem = _round_filters(EFFICIENTNET_STEM, width)
        levels: list[nn.Module] = [ConvNormAct(in_channels, stem, 3, 1, norm, nn.SiLU(inplace=True))]
        channels = [stem]
        cin = stem
        for i, stride in enumerate(strides):
            stages = EFFICIENTNET_LEVELS[i] if i < len(EFFICIENTNET_LEVELS) else EFFICIENTNET_LEVELS[-1][-1:]
            blocks = []
            for expand, kernel, cout, repeats in stages:
                cout = _round_filters(cout, width)
                for r in range(math.ceil(repeats * depth)):
                    first = not blocks and r == 0
                    blocks.append(MBConv(cin, cout, kernel, stride if first else 1, expand, norm))
                    cin = cout
            levels.append(nn.Sequential(*blocks))
            channels.append(cin)
        super().__init__(levels, channels, strides)
        init_weights(self)


def _vgg(in_channels: int, strides: Strides, params) -> Encoder:
    return VGGEncoder(
        in_channels, strides, params.base_features, params.max_features, params.norm, params.negative_slope
    )


def _efficientnet(variant: str) -> Callable[..., Encoder]:
    def factory(in_channels: int, strides: Strides, params) -> Encoder:
        width, depth = EFFICIENTNET_SCALES[variant]
        width = params.width_multiplier or width
        depth = params.depth_multiplier or depth
        return EfficientNetEncoder(in_channels, strides, width, depth, params.norm)

    return factory


ENCODERS: dict[str, Callable[..., Encoder]] = {"vgg": _vgg, **{v: _efficientnet(v) for v in EFFICIENTNET_SCALES}}


def _round_filters(channels: int, width: float, divisor: int = 8) -> int:
    """Scale channels by ``width`` to a multiple of ``divisor`` without losing more than 10% (EfficientNet)."""
    scaled = max(divisor, int(channels * width + divisor / 2) // divisor * divisor)
    return scaled + divisor if scaled < 0.9 * channels * width else scaled

"""An encoder used alone as a 3D image classifier (``vgg3d``): the paper's reuse of the U-Net's encoder."""

from __future__ import annotations

import torch
from torch import nn

from biom3d.core.context import RunContext
from biom3d.models.encoders import Encoder, build_encoder
from biom3d.models.unet import strides_for


def build_classifier(params, ctx) -> Classifier:
    """Factory of ``vgg3d`` (params: ``ClassifierParams``)."""
    ctx = ctx if ctx is not None else RunContext()
    in_channels = params.in_channels or ctx.in_channels
    encoder = build_encoder(params.encoder, in_channels, strides_for(params, ctx), params)
    return Classifier(encoder, params.num_classes or ctx.num_classes, params.dropout)


class Classifier(nn.Module):
    """Encoder, global average pooling of its deepest level, dropout, linear layer: ``(B, C, D, H, W) -> (B, K)``."""

    def __init__(self, encoder: Encoder, num_classes: int, dropout: float = 0.0):
        super().__init__()
        self.encoder = encoder
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(encoder.channels[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.encoder(x)[-1]
        return self.fc(self.dropout(torch.flatten(self.pool(features), 1)))

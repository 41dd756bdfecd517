"""MONAI's 3D segmentation networks as biom3d model factories ``build_x(params, ctx) -> nn.Module``.

Channels and dimensions always come from the run context (``in = ctx.in_channels``, ``out = ctx.out_channels``,
3 spatial dims); the layout rules live in :mod:`biom3d.monai.params`, so the network built is the one the
config validation checked.
"""

from __future__ import annotations

from typing import Any

import torch
from monai.networks import nets
from torch import nn

from biom3d.monai.params import (
    AttentionUnetParams,
    BasicUNetParams,
    DynUNetParams,
    SegResNetParams,
    SwinUNETRParams,
    UNetParams,
    UNETRParams,
    require_patch,
)

SPATIAL_DIMS = 3
_ACTS = {"prelu": "PRELU", "relu": "RELU", "leakyrelu": ("LEAKYRELU", {"negative_slope": 0.01, "inplace": True})}
_NORMS = {"instance": ("INSTANCE", {"affine": True}), "batch": "BATCH"}


def build_unet(params: UNetParams, ctx: Any) -> nn.Module:
    channels, strides = params.layout(ctx)
    return nets.UNet(
        spatial_dims=SPATIAL_DIMS,
        in_channels=ctx.in_channels,
        out_channels=ctx.out_channels,
        channels=channels,
        strides=strides,
        kernel_size=params.kernel_size,
        up_kernel_size=params.up_kernel_size,
        num_res_units=params.num_res_units,
        act=_ACTS[params.act],
        norm=_NORMS[params.norm],
        dropout=params.dropout,
    )


def build_attention_unet(params: AttentionUnetParams, ctx: Any) -> nn.Module:
    channels, strides = params.layout(ctx)
    return nets.AttentionUnet(
        spatial_dims=SPATIAL_DIMS,
        in_channels=ctx.in_channels,
        out_channels=ctx.out_channels,
        channels=channels,
        strides=strides,
        kernel_size=params.kernel_size,
        up_kernel_size=params.up_kernel_size,
        dropout=params.dropout,
    )


def build_basic_unet(params: BasicUNetParams, ctx: Any) -> nn.Module:
    return nets.BasicUNet(
        spatial_dims=SPATIAL_DIMS,
        in_channels=ctx.in_channels,
        out_channels=ctx.out_channels,
        features=params.features,
        act=_ACTS[params.act],
        norm=_NORMS[params.norm],
        dropout=params.dropout,
        upsample=params.upsample,
    )


def build_dyn_unet(params: DynUNetParams, ctx: Any) -> nn.Module:
    kernels, strides, filters = params.layout(ctx)
    net = nets.DynUNet(
        spatial_dims=SPATIAL_DIMS,
        in_channels=ctx.in_channels,
        out_channels=ctx.out_channels,
        kernel_size=kernels,
        strides=strides,
        upsample_kernel_size=strides[1:],
        filters=filters,
        dropout=params.dropout or None,
        norm_name=_NORMS[params.norm],
        deep_supervision=params.deep_supervision,
        deep_supr_num=params.deep_supr_num,
        res_block=params.res_block,
    )
    return DeepSupervisionList(net) if params.deep_supervision else net


def build_segresnet(params: SegResNetParams, ctx: Any) -> nn.Module:
    norm: Any = ("GROUP", {"num_groups": params.num_groups}) if params.norm == "group" else _NORMS[params.norm]
    return nets.SegResNet(
        spatial_dims=SPATIAL_DIMS,
        init_filters=params.init_filters,
        in_channels=ctx.in_channels,
        out_channels=ctx.out_channels,
        dropout_prob=params.dropout_prob,
        norm=norm,
        blocks_down=tuple(params.blocks_down),
        blocks_up=tuple(params.blocks_up),
        upsample_mode=params.upsample_mode,
    )


def build_unetr(params: UNETRParams, ctx: Any) -> nn.Module:
    return nets.UNETR(
        in_channels=ctx.in_channels,
        out_channels=ctx.out_channels,
        img_size=require_patch(ctx, "UNETR"),
        feature_size=params.feature_size,
        hidden_size=params.hidden_size,
        mlp_dim=params.mlp_dim,
        num_heads=params.num_heads,
        proj_type=params.proj_type,
        norm_name=params.norm,
        res_block=params.res_block,
        dropout_rate=params.dropout_rate,
        spatial_dims=SPATIAL_DIMS,
    )


def build_swin_unetr(params: SwinUNETRParams, ctx: Any) -> nn.Module:
    return nets.SwinUNETR(
        in_channels=ctx.in_channels,
        out_channels=ctx.out_channels,
        depths=params.depths,
        num_heads=params.num_heads,
        window_size=params.window_size,
        feature_size=params.feature_size,
        norm_name=params.norm,
        drop_rate=params.drop_rate,
        attn_drop_rate=params.attn_drop_rate,
        dropout_path_rate=params.dropout_path_rate,
        use_checkpoint=params.use_checkpoint,
        use_v2=params.use_v2,
        spatial_dims=SPATIAL_DIMS,
    )


class DeepSupervisionList(nn.Module):
    """DynUNet stacks its deep-supervision heads on dim 1 in training; biom3d's losses take a list of logits,
    full resolution first (the ``Metric`` protocol). In eval mode the single full-resolution output passes."""

    deep_supervision = True

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        out = self.net(x)
        if self.training and out.dim() == x.dim() + 1:
            return list(torch.unbind(out, dim=1))
        return out

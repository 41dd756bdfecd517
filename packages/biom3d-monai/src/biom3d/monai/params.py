"""Params models of the MONAI networks, and the layout rules shared by validation and construction.

Light on purpose (pydantic + core's pure-Python autoconfig): ``plugin.py`` imports this at discovery. Each
network's shape constraint is checked here, against the run context pydantic receives as
``info.context["run"]``, so that a bad patch size is reported at config validation under ``model.params``
instead of surfacing as a shape error at the first training step.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, model_validator

from biom3d.core.geometry import pool_strides

PosInt = Annotated[int, Field(ge=1)]
Triple = tuple[PosInt, PosInt, PosInt]
Stride = (
    Annotated[int, Field(ge=1, le=4)]
    | tuple[Annotated[int, Field(ge=1, le=4)], Annotated[int, Field(ge=1, le=4)], Annotated[int, Field(ge=1, le=4)]]
)
DEFAULT_DEPTH = 4  # down-samplings when neither params nor the run give a pooling


def run_context(info: ValidationInfo | None) -> Any:
    """The RunContext handed to validators, or None (validation without a run)."""
    context = getattr(info, "context", None) or {}
    return context.get("run") if isinstance(context, dict) else None


def check_divisible(patch: Sequence[int] | None, divisors: Sequence[int], network: str, why: str) -> None:
    """Raise a ValueError naming the patch size and the divisor when an axis does not divide."""
    if not patch:
        return
    bad = [(axis, p, d) for axis, (p, d) in enumerate(zip(patch, divisors, strict=True)) if p % d]
    if not bad:
        return
    same = len(set(divisors)) == 1
    divisor = f"{divisors[0]} on every axis" if same else f"{tuple(divisors)} per axis"
    detail = ", ".join(f"axis {a}: {p} % {d} = {p % d}" for a, p, d in bad)
    fixed = tuple(max(d, round(p / d) * d) for p, d in zip(patch, divisors, strict=True))
    raise ValueError(
        f"patch size {tuple(patch)} must be divisible by {divisor} for {network} ({why}); {detail}. "
        f"Use e.g. patch_size {list(fixed)}"
    )


def check_bottleneck(patch: Sequence[int] | None, divisors: Sequence[int], network: str, norm: str) -> None:
    """Instance normalisation fails in training on a single voxel: refuse a patch that leaves one at the
    bottleneck (patch / total stride)."""
    if not patch or norm != "instance":
        return
    bottom = tuple(p // d for p, d in zip(patch, divisors, strict=True))
    if math.prod(bottom) <= 1:
        raise ValueError(
            f"patch size {tuple(patch)} leaves a single voxel at the bottleneck of {network} (divided by "
            f"{tuple(divisors)}); instance normalisation needs more than one: enlarge the patch or pool less"
        )


def total_stride(strides: Sequence[int | Sequence[int]], ndim: int = 3) -> tuple[int, ...]:
    """Product of per-stage strides, per axis."""
    totals = [1] * ndim
    for s in strides:
        per_axis = (s,) * ndim if isinstance(s, int) else tuple(s)
        totals = [t * a for t, a in zip(totals, per_axis, strict=True)]
    return tuple(totals)


def _features(base: int, cap: int, levels: int) -> list[int]:
    return [min(base * 2**i, cap) for i in range(levels)]


def _run_strides(num_pools: Sequence[int] | None) -> list[tuple[int, ...]] | None:
    return pool_strides(num_pools) if num_pools else None


# -- MONAI UNet and AttentionUnet: channels + strides -----------------------------------------------------
class _EncoderDecoderParams(BaseModel):
    """Shared by UNet and AttentionUnet: one channel count per level, one stride per down-sampling."""

    model_config = ConfigDict(extra="forbid", defer_build=True)

    channels: list[PosInt] | None = Field(
        None, min_length=2, description="Feature maps per level (MONAI `channels`); default base_features*2^i."
    )
    strides: list[Stride] | None = Field(
        None,
        min_length=1,
        description="Stride of each down-sampling, an int or a per-axis triple (MONAI `strides`); "
        "default: from the run's num_pools (core's pool_strides), else 2 four times.",
    )
    base_features: int = Field(16, ge=1, le=512, description="Feature maps of the first level when channels is unset.")
    max_features: int = Field(256, ge=1, le=2048, description="Cap on derived feature maps.")
    kernel_size: int = Field(3, ge=1, le=7, description="Convolution kernel size (odd).")
    up_kernel_size: int = Field(3, ge=1, le=7, description="Up-sampling convolution kernel size (odd).")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout probability.")

    def layout(self, ctx: Any) -> tuple[list[int], list[int | tuple[int, ...]]]:
        """(channels, strides) for this run: explicit params first, then the run's pooling, then defaults."""
        strides: list[int | tuple[int, ...]] | None = list(self.strides) if self.strides else None
        if strides is None:
            strides = _run_strides(getattr(ctx, "num_pools", None))  # type: ignore[assignment]
        if strides is None:
            levels = len(self.channels) - 1 if self.channels else DEFAULT_DEPTH
            strides = [2] * levels
        channels = (
            list(self.channels) if self.channels else _features(self.base_features, self.max_features, len(strides) + 1)
        )
        return channels, strides

    def _check(self, info: ValidationInfo, network: str) -> None:
        for name in ("kernel_size", "up_kernel_size"):
            if getattr(self, name) % 2 == 0:
                raise ValueError(
                    f"{name} must be odd (got {getattr(self, name)}) so that 'same' padding keeps the size"
                )
        ctx = run_context(info)
        channels, strides = self.layout(ctx)
        if not strides:
            raise ValueError(f"{network} needs at least one down-sampling; the run's num_pools gives none")
        if len(channels) != len(strides) + 1:
            raise ValueError(
                f"{network} needs one more channel count than strides: got {len(channels)} channels "
                f"{channels} for {len(strides)} strides {strides}; give both, or one of them and let the other follow"
            )
        total = total_stride(strides)
        check_divisible(getattr(ctx, "patch_size", None), total, network, f"total stride {total}")
        check_bottleneck(getattr(ctx, "patch_size", None), total, network, getattr(self, "norm", "batch"))


class UNetParams(_EncoderDecoderParams):
    num_res_units: int = Field(2, ge=0, le=8, description="Residual units per level (0: plain convolutions).")
    act: Literal["prelu", "relu", "leakyrelu"] = Field("prelu", description="Activation.")
    norm: Literal["instance", "batch"] = Field("instance", description="Normalisation layer.")

    @model_validator(mode="after")
    def _valid(self, info: ValidationInfo) -> UNetParams:
        self._check(info, "UNet")
        return self


class AttentionUnetParams(_EncoderDecoderParams):
    @model_validator(mode="after")
    def _valid(self, info: ValidationInfo) -> AttentionUnetParams:
        self._check(info, "AttentionUnet")
        return self


# -- BasicUNet --------------------------------------------------------------------------------------------
class BasicUNetParams(BaseModel):
    model_config = ConfigDict(extra="forbid", defer_build=True)

    features: tuple[PosInt, PosInt, PosInt, PosInt, PosInt, PosInt] = Field(
        (32, 32, 64, 128, 256, 32), description="Feature maps of the five encoder levels and of the last decoder."
    )
    act: Literal["leakyrelu", "relu", "prelu"] = Field("leakyrelu", description="Activation.")
    norm: Literal["instance", "batch"] = Field("instance", description="Normalisation layer.")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout probability.")
    upsample: Literal["deconv", "pixelshuffle", "nontrainable"] = Field("deconv", description="Up-sampling mode.")

    DIVISOR: ClassVar[int] = 16  # four fixed 2x max-poolings

    @model_validator(mode="after")
    def _valid(self, info: ValidationInfo) -> BasicUNetParams:
        patch = getattr(run_context(info), "patch_size", None)
        check_divisible(patch, (self.DIVISOR,) * len(patch or ()), "BasicUNet", "four 2x poolings")
        check_bottleneck(patch, (self.DIVISOR,) * len(patch or ()), "BasicUNet", self.norm)
        return self


# -- DynUNet ----------------------------------------------------------------------------------------------
class DynUNetParams(BaseModel):
    model_config = ConfigDict(extra="forbid", defer_build=True)

    num_pools: Triple | None = Field(None, description="Poolings per axis; overrides the run's num_pools.")
    base_features: int = Field(32, ge=1, le=512, description="Feature maps of the first stage (doubled per stage).")
    max_features: int = Field(320, ge=1, le=2048, description="Cap on feature maps (nnU-Net uses 320).")
    kernel_size: int = Field(3, ge=1, le=7, description="Convolution kernel size of every stage (odd).")
    deep_supervision: bool = Field(
        False, description="Also output lower decoder stages in training (a list, full resolution first)."
    )
    deep_supr_num: int = Field(2, ge=1, le=5, description="Extra decoder outputs under deep supervision.")
    res_block: bool = Field(False, description="Residual convolution blocks.")
    norm: Literal["instance", "batch"] = Field("instance", description="Normalisation layer.")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout probability.")

    def pools(self, ctx: Any) -> tuple[int, ...]:
        return tuple(self.num_pools or getattr(ctx, "num_pools", None) or (DEFAULT_DEPTH,) * 3)

    def layout(self, ctx: Any) -> tuple[list[int | tuple[int, ...]], list[int | tuple[int, ...]], list[int]]:
        """(kernels, strides, filters): a stride-1 input stage, then core's pool_strides of the pooling counts."""
        strides: list[int | tuple[int, ...]] = [1, *pool_strides(self.pools(ctx))]
        kernels: list[int | tuple[int, ...]] = [self.kernel_size] * len(strides)
        return kernels, strides, _features(self.base_features, self.max_features, len(strides))

    @model_validator(mode="after")
    def _valid(self, info: ValidationInfo) -> DynUNetParams:
        if self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd (got {self.kernel_size})")
        ctx = run_context(info)
        pools = self.pools(ctx)
        depth = max(pools)
        if depth < 1:
            raise ValueError(f"num_pools {list(pools)} gives no down-sampling; DynUNet needs at least one")
        if self.deep_supervision and self.deep_supr_num >= depth:
            raise ValueError(
                f"deep_supr_num {self.deep_supr_num} must be below the number of up-samplings ({depth}, from num_pools {list(pools)})"
            )
        total = tuple(2**p for p in pools)
        check_divisible(getattr(ctx, "patch_size", None), total, "DynUNet", f"num_pools {list(pools)}")
        check_bottleneck(getattr(ctx, "patch_size", None), total, "DynUNet", self.norm)
        return self


# -- SegResNet --------------------------------------------------------------------------------------------
class SegResNetParams(BaseModel):
    model_config = ConfigDict(extra="forbid", defer_build=True)

    init_filters: int = Field(8, ge=1, le=512, description="Feature maps of the first level (doubled per level).")
    blocks_down: tuple[PosInt, ...] = Field(
        (1, 2, 2, 4), min_length=1, max_length=7, description="Residual blocks per encoder level."
    )
    blocks_up: tuple[PosInt, ...] = Field(
        (1, 1, 1), max_length=6, description="Residual blocks per decoder level (one fewer)."
    )
    norm: Literal["group", "instance", "batch"] = Field("group", description="Normalisation layer.")
    num_groups: int = Field(8, ge=1, description="Groups of group normalisation; must divide init_filters.")
    dropout_prob: float | None = Field(
        None, ge=0.0, lt=1.0, description="Dropout probability after the first convolution."
    )
    upsample_mode: Literal["deconv", "nontrainable", "pixelshuffle"] = Field(
        "nontrainable", description="Up-sampling mode."
    )

    @model_validator(mode="after")
    def _valid(self, info: ValidationInfo) -> SegResNetParams:
        if len(self.blocks_up) != len(self.blocks_down) - 1:
            raise ValueError(
                f"blocks_up needs one entry fewer than blocks_down: got {len(self.blocks_up)} and {len(self.blocks_down)}"
            )
        if self.norm == "group" and self.init_filters % self.num_groups:
            raise ValueError(f"init_filters {self.init_filters} must be a multiple of num_groups {self.num_groups}")
        divisor = 2 ** (len(self.blocks_down) - 1)
        patch = getattr(run_context(info), "patch_size", None)
        check_divisible(
            patch, (divisor,) * len(patch or ()), "SegResNet", f"{len(self.blocks_down) - 1} 2x down-samplings"
        )
        check_bottleneck(patch, (divisor,) * len(patch or ()), "SegResNet", self.norm)
        return self


# -- UNETR and SwinUNETR ----------------------------------------------------------------------------------
class UNETRParams(BaseModel):
    model_config = ConfigDict(extra="forbid", defer_build=True)

    feature_size: int = Field(16, ge=1, le=512, description="Feature maps of the convolutional decoder.")
    hidden_size: int = Field(768, ge=1, le=4096, description="Transformer embedding size; a multiple of num_heads.")
    mlp_dim: int = Field(3072, ge=1, le=16384, description="Transformer MLP size.")
    num_heads: int = Field(12, ge=1, le=64, description="Attention heads.")
    proj_type: Literal["conv", "perceptron"] = Field("conv", description="Patch embedding.")
    norm: Literal["instance", "batch"] = Field("instance", description="Normalisation of the decoder.")
    res_block: bool = Field(True, description="Residual decoder blocks.")
    dropout_rate: float = Field(0.0, ge=0.0, lt=1.0, description="Transformer dropout.")

    VIT_PATCH: ClassVar[int] = 16  # fixed in MONAI's UNETR

    @model_validator(mode="after")
    def _valid(self, info: ValidationInfo) -> UNETRParams:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} must be a multiple of num_heads {self.num_heads}")
        patch = getattr(run_context(info), "patch_size", None)
        check_divisible(patch, (self.VIT_PATCH,) * len(patch or ()), "UNETR", "its 16-voxel ViT patches")
        return self


class SwinUNETRParams(BaseModel):
    model_config = ConfigDict(extra="forbid", defer_build=True)

    feature_size: int = Field(24, ge=12, le=384, description="Embedding size; a multiple of 12.")
    depths: tuple[PosInt, PosInt, PosInt, PosInt] = Field((2, 2, 2, 2), description="Swin blocks per stage.")
    num_heads: tuple[PosInt, PosInt, PosInt, PosInt] = Field((3, 6, 12, 24), description="Attention heads per stage.")
    window_size: int = Field(7, ge=1, le=16, description="Attention window size.")
    drop_rate: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout.")
    attn_drop_rate: float = Field(0.0, ge=0.0, lt=1.0, description="Attention dropout.")
    dropout_path_rate: float = Field(0.0, ge=0.0, lt=1.0, description="Stochastic depth.")
    norm: Literal["instance", "batch"] = Field("instance", description="Normalisation of the decoder.")
    use_checkpoint: bool = Field(False, description="Gradient checkpointing: less memory, slower.")
    use_v2: bool = Field(False, description="SwinUNETR-V2 (residual convolution before each stage).")

    DIVISOR: ClassVar[int] = 32  # 2x patch embedding then four 2x patch mergings

    @model_validator(mode="after")
    def _valid(self, info: ValidationInfo) -> SwinUNETRParams:
        if self.feature_size % 12:
            raise ValueError(f"feature_size {self.feature_size} must be a multiple of 12")
        for stage, heads in enumerate(self.num_heads):
            width = self.feature_size * 2**stage
            if width % heads:
                raise ValueError(
                    f"num_heads[{stage}] = {heads} must divide the stage width {width} (feature_size*2^{stage})"
                )
        patch = getattr(run_context(info), "patch_size", None)
        check_divisible(patch, (self.DIVISOR,) * len(patch or ()), "SwinUNETR", "2x embedding then four 2x mergings")
        check_bottleneck(patch, (self.DIVISOR,) * len(patch or ()), "SwinUNETR", self.norm)
        return self


def require_patch(ctx: Any, network: str) -> tuple[int, ...]:
    """The run's patch size, for networks built for a fixed input size."""
    patch = getattr(ctx, "patch_size", None)
    if not patch:
        raise ValueError(f"{network} is built for a fixed input size: the run needs a patch_size")
    return tuple(int(p) for p in patch)

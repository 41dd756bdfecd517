"""MONAI's segmentation losses as biom3d losses: ``loss(logits, target) -> scalar``.

Softmax runs (label maps) build MONAI's loss with ``to_onehot_y=True, softmax=True``; multi-label runs
(``ctx.multilabel``) with ``sigmoid=True``. ``include_background`` applies to softmax outputs only: a
multi-label network has no background channel, so every channel is scored. Every loss accepts
deep-supervision outputs (a list of logits, full resolution first; lower outputs get a nearest-resized target).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from monai import losses as monai_losses
from torch import nn

from biom3d.monai.metricparams import (
    DiceCELossParams,
    DiceFocalLossParams,
    DiceLossParams,
    FocalLossParams,
    GeneralizedDiceLossParams,
    TverskyLossParams,
)
from biom3d.monai.targets import deep_supervision_weights, label_target, multilabel_target, resize_target, use_sigmoid


def build_dice_loss(params: DiceLossParams, ctx: Any) -> SegLoss:
    sigmoid = use_sigmoid(params.activation, ctx)
    loss = monai_losses.DiceLoss(
        **_dice_args(params, sigmoid), squared_pred=params.squared_pred, jaccard=params.jaccard
    )
    return SegLoss(loss, sigmoid)


def build_dice_ce_loss(params: DiceCELossParams, ctx: Any) -> SegLoss:
    sigmoid = use_sigmoid(params.activation, ctx)
    if sigmoid:
        # MONAI's DiceCELoss uses a softmax cross-entropy whenever there are several channels, which is wrong
        # for independent (multi-label) channels: pair its Dice with a per-channel BCE instead.
        dice = monai_losses.DiceLoss(
            **_dice_args(params, True), squared_pred=params.squared_pred, jaccard=params.jaccard
        )
        return SegLoss(WeightedSum(dice, nn.BCEWithLogitsLoss(), params.lambda_dice, params.lambda_ce), True)
    loss = monai_losses.DiceCELoss(
        **_dice_args(params, False),
        squared_pred=params.squared_pred,
        jaccard=params.jaccard,
        lambda_dice=params.lambda_dice,
        lambda_ce=params.lambda_ce,
        label_smoothing=params.label_smoothing,
    )
    return SegLoss(loss, False)


def build_dice_focal_loss(params: DiceFocalLossParams, ctx: Any) -> SegLoss:
    sigmoid = use_sigmoid(params.activation, ctx)
    loss = monai_losses.DiceFocalLoss(
        **_dice_args(params, sigmoid),
        squared_pred=params.squared_pred,
        jaccard=params.jaccard,
        lambda_dice=params.lambda_dice,
        lambda_focal=params.lambda_focal,
        gamma=params.gamma,
        alpha=params.alpha,
    )
    return SegLoss(loss, sigmoid)


def build_tversky_loss(params: TverskyLossParams, ctx: Any) -> SegLoss:
    sigmoid = use_sigmoid(params.activation, ctx)
    return SegLoss(
        monai_losses.TverskyLoss(**_dice_args(params, sigmoid), alpha=params.alpha, beta=params.beta), sigmoid
    )


def build_generalized_dice_loss(params: GeneralizedDiceLossParams, ctx: Any) -> SegLoss:
    sigmoid = use_sigmoid(params.activation, ctx)
    return SegLoss(monai_losses.GeneralizedDiceLoss(**_dice_args(params, sigmoid), w_type=params.w_type), sigmoid)


def build_focal_loss(params: FocalLossParams, ctx: Any) -> SegLoss:
    sigmoid = use_sigmoid(params.activation, ctx)
    loss = monai_losses.FocalLoss(
        include_background=params.include_background or sigmoid,
        to_onehot_y=not sigmoid,
        use_softmax=not sigmoid,
        gamma=params.gamma,
        alpha=params.alpha,
    )
    return SegLoss(loss, sigmoid)


class SegLoss(nn.Module):
    """Adapts biom3d targets (and deep-supervision lists) to a MONAI loss built for one activation."""

    deep_supervision = True

    def __init__(self, loss: nn.Module, sigmoid: bool):
        super().__init__()
        self.loss = loss
        self.sigmoid = sigmoid

    def forward(self, logits: torch.Tensor | Sequence[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        if isinstance(logits, torch.Tensor):
            return self.loss(logits.float(), self._target(target, logits))
        outputs = list(logits)
        full = self._target(target, outputs[0])
        weights = deep_supervision_weights(len(outputs))
        return sum(
            (
                w * self.loss(out.float(), resize_target(full, out.shape[2:]))
                for w, out in zip(weights, outputs, strict=True)
            ),
            start=torch.zeros((), device=outputs[0].device),
        )

    def _target(self, target: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        return multilabel_target(target, logits) if self.sigmoid else label_target(target, logits)


class WeightedSum(nn.Module):
    """``a * first + b * second`` of two losses taking the same inputs."""

    def __init__(self, first: nn.Module, second: nn.Module, a: float, b: float):
        super().__init__()
        self.first, self.second, self.a, self.b = first, second, a, b

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.a * self.first(logits, target) + self.b * self.second(logits, target)


def _dice_args(params: Any, sigmoid: bool) -> dict[str, Any]:
    """MONAI's shared Dice-family arguments for one activation."""
    return dict(
        include_background=params.include_background or sigmoid,
        to_onehot_y=not sigmoid,
        sigmoid=sigmoid,
        softmax=not sigmoid,
        batch=params.batch,
        smooth_nr=params.smooth_nr,
        smooth_dr=params.smooth_dr,
    )

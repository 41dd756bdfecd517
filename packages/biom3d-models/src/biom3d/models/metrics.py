"""Segmentation metrics on discretised predictions (argmax, or sigmoid > 0.5): Dice and IoU per class and mean.

Scores are computed per image and class, then averaged over the batch. A class absent from both the prediction
and the target of an image scores 1.0 (a correct empty prediction), so no score is ever NaN.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from biom3d.models.losses import SoftDiceLoss
from biom3d.models.targets import dense_target, discretise, multilabel_mode


def build_dice(params, ctx) -> Dice:
    return Dice(
        multilabel_mode(params.multilabel, ctx),
        params.include_background,
        params.smooth,
        params.batch_dice,
        params.role if params.role != "auto" else (getattr(ctx, "role", None) or "auto"),  # the slot decides
    )


def build_iou(params, ctx) -> HardMetric:
    return HardMetric(multilabel_mode(params.multilabel, ctx), params.include_background, "iou")


class HardMetric(nn.Module):
    """``per_class(logits, target) -> (C,)`` and ``forward -> mean over classes``; background excluded under
    softmax unless ``include_background``. ``kind`` is 'dice' (2|X∩Y|/(|X|+|Y|)) or 'iou' (|X∩Y|/|X∪Y|)."""

    deep_supervision = False

    def __init__(self, multilabel: bool, include_background: bool = False, kind: str = "dice"):
        super().__init__()
        if kind not in ("dice", "iou"):
            raise ValueError(f"unknown metric kind {kind!r}")
        self.multilabel, self.include_background, self.kind = multilabel, include_background, kind
        self.name = kind

    @torch.no_grad()
    def per_class(self, logits: Any, target: torch.Tensor) -> torch.Tensor:
        dense = dense_target(self.name, logits, target, self.multilabel) > 0.5
        pred = discretise(logits, self.multilabel) > 0.5
        if not self.multilabel and not self.include_background:
            pred, dense = pred[:, 1:], dense[:, 1:]
        axes = list(range(2, pred.dim()))
        inter = (pred & dense).sum(axes)  # exact integer counts, (B, C)
        sizes = pred.sum(axes) + dense.sum(axes)
        denom = sizes if self.kind == "dice" else sizes - inter
        numer = 2 * inter if self.kind == "dice" else inter
        score = torch.where(
            denom > 0, numer.float() / denom.clamp_min(1).float(), torch.ones_like(denom, dtype=torch.float32)
        )
        return score.mean(0)

    def forward(self, logits: Any, target: torch.Tensor) -> torch.Tensor:
        return self.per_class(logits, target).mean()

    def extra_repr(self) -> str:
        return f"{self.kind}, multilabel={self.multilabel}"


class Dice(HardMetric):
    """The ``dice`` component, metric and loss: ``role`` 'metric' gives the hard Dice score (higher is better),
    'loss' gives ``1 - soft Dice`` (differentiable). 'auto' picks the loss when called on outputs that require
    gradients (a training step) and the metric otherwise; a trainer may set ``role`` to pin it."""

    def __init__(
        self,
        multilabel: bool,
        include_background: bool = False,
        smooth: float = 1e-5,
        batch_dice: bool = True,
        role: str = "auto",
    ):
        super().__init__(multilabel, include_background, "dice")
        self.role = role
        self.soft = SoftDiceLoss(multilabel, smooth, include_background, batch_dice, name="dice")

    def forward(self, logits: Any, target: torch.Tensor) -> torch.Tensor:
        if self.role == "loss" or (
            self.role == "auto"
            and isinstance(logits, torch.Tensor)
            and logits.requires_grad
            and torch.is_grad_enabled()
        ):
            return self.soft(logits, target)
        return self.per_class(logits, target).mean()

"""Segmentation losses: soft Dice, cross-entropy and their sums, for label maps (softmax) and multi-label
masks (sigmoid). See :mod:`biom3d.models.targets` for the accepted shapes.

Every loss computes in float32 (safe under autocast) and stays finite on empty foreground: the Dice's
``smooth`` term keeps its denominator positive.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from biom3d.models.targets import dense_target, multilabel_mode


def build_dice_ce(params, ctx) -> DiceCE:
    return DiceCE(
        multilabel_mode(params.multilabel, ctx),
        params.smooth,
        params.include_background,
        params.batch_dice,
        params.dice_weight,
        params.ce_weight,
        name="dice-ce",
    )


def build_dice_bce(params, ctx) -> DiceCE:
    """Sigmoid Dice + BCE: ``dice-ce`` in multi-label mode, every channel scored."""
    return DiceCE(True, params.smooth, True, params.batch_dice, params.dice_weight, params.bce_weight, name="dice-bce")


def build_ce(params, ctx) -> CrossEntropy:
    return CrossEntropy(multilabel_mode(params.multilabel, ctx), name="ce")


def build_bce(params, ctx) -> CrossEntropy:
    return CrossEntropy(True, name="bce")


def build_mse(params, ctx) -> MSE:
    return MSE(multilabel_mode(params.multilabel, ctx), name="mse")


class SegLoss(nn.Module):
    """Base: checks and densifies the target, then ``compute(logits float32, dense target)``."""

    deep_supervision = False

    def __init__(self, multilabel: bool, name: str):
        super().__init__()
        self.multilabel = multilabel
        self.name = name

    def forward(self, logits: Any, target: torch.Tensor) -> torch.Tensor:
        dense = dense_target(self.name, logits, target, self.multilabel)
        return self.compute(logits.float(), dense)

    def compute(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"{self.name}, multilabel={self.multilabel}"


class CrossEntropy(SegLoss):
    """Softmax cross-entropy against (possibly soft) one-hot targets, or binary cross-entropy per channel."""

    def compute(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return cross_entropy(logits, target, self.multilabel)


class DiceCE(SegLoss):
    """``dice_weight * (1 - soft Dice) + ce_weight * CE``; the paper's default loss (weights 1, 1)."""

    def __init__(
        self,
        multilabel: bool,
        smooth: float = 1e-5,
        include_background: bool = False,
        batch_dice: bool = True,
        dice_weight: float = 1.0,
        ce_weight: float = 1.0,
        name: str = "dice-ce",
    ):
        super().__init__(multilabel, name)
        self.smooth, self.include_background, self.batch_dice = smooth, include_background, batch_dice
        self.dice_weight, self.ce_weight = dice_weight, ce_weight

    def compute(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        loss = logits.new_zeros(())
        if self.dice_weight:
            dice = soft_dice(logits, target, self.multilabel, self.smooth, self.include_background, self.batch_dice)
            loss = loss + self.dice_weight * (1 - dice.mean())
        if self.ce_weight:
            loss = loss + self.ce_weight * cross_entropy(logits, target, self.multilabel)
        return loss


class SoftDiceLoss(DiceCE):
    """``1 - soft Dice`` alone."""

    def __init__(
        self,
        multilabel: bool,
        smooth: float = 1e-5,
        include_background: bool = False,
        batch_dice: bool = True,
        name: str = "dice",
    ):
        super().__init__(multilabel, smooth, include_background, batch_dice, 1.0, 0.0, name=name)


class MSE(SegLoss):
    """Mean squared error between probabilities (softmax or sigmoid) and the dense target."""

    def compute(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        probs = torch.sigmoid(logits) if self.multilabel else torch.softmax(logits, 1)
        return F.mse_loss(probs, target)


def soft_dice(
    logits: torch.Tensor,
    target: torch.Tensor,
    multilabel: bool,
    smooth: float = 1e-5,
    include_background: bool = False,
    batch_dice: bool = True,
) -> torch.Tensor:
    """Per-class soft Dice ``(2 sum(p t) + s) / (sum p + sum t + s)``, summed over the batch too if ``batch_dice``
    (then averaged over images otherwise). Background (channel 0) is dropped under softmax unless asked."""
    probs = torch.sigmoid(logits) if multilabel else torch.softmax(logits, 1)
    if not multilabel and not include_background:
        probs, target = probs[:, 1:], target[:, 1:]
    axes = [0, *range(2, logits.dim())] if batch_dice else list(range(2, logits.dim()))
    inter = (probs * target).sum(axes)
    total = probs.sum(axes) + target.sum(axes)
    dice = (2 * inter + smooth) / (total + smooth)
    return dice if batch_dice else dice.mean(0)


def cross_entropy(logits: torch.Tensor, target: torch.Tensor, multilabel: bool) -> torch.Tensor:
    """Mean voxel cross-entropy; soft targets allowed (down-sampled deep-supervision targets)."""
    if multilabel:
        return F.binary_cross_entropy_with_logits(logits, target)
    return -(target * F.log_softmax(logits, 1)).sum(1).mean()

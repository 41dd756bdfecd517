"""A loss and a metric (:class:`biom3d.core.protocols.Metric`): ``(logits (B, C, D, H, W), target) -> scalar``.

``target`` is a batch of dataset masks: int64 (B, D, H, W) labels, or float32 (B, K, D, H, W) when multi-label.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def build_loss(params, ctx) -> SoftDiceCE:
    return SoftDiceCE(params.dice_weight, multilabel=ctx.multilabel)


def build_dice(params, ctx) -> HardDice:
    return HardDice(multilabel=ctx.multilabel)


def _one_hot(labels: torch.Tensor, channels: int) -> torch.Tensor:
    return F.one_hot(labels.long(), channels).movedim(-1, 1).float()


class SoftDiceCE:
    deep_supervision = False  # takes one tensor of logits, not a list of deep-supervision outputs

    def __init__(self, dice_weight: float, *, multilabel: bool):
        self.dice_weight, self.multilabel = dice_weight, multilabel

    def __call__(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        if self.multilabel:
            truth = target.float()
            ce = F.binary_cross_entropy_with_logits(logits, truth)
            probs = logits.sigmoid()
        else:
            ce = F.cross_entropy(logits, target.long())
            probs = logits.softmax(1)[:, 1:]  # foreground channels only
            truth = _one_hot(target, logits.shape[1])[:, 1:]
        dims = (0, *range(2, logits.ndim))
        dice = (2 * (probs * truth).sum(dims) + 1) / (probs.sum(dims) + truth.sum(dims) + 1)
        return ce + self.dice_weight * (1 - dice.mean())


class HardDice:
    """As a metric: ``per_class`` gives one score per foreground class, logged as ``val_hard-dice_<class>``."""

    def __init__(self, *, multilabel: bool):
        self.multilabel = multilabel

    def __call__(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.per_class(logits, target).mean()

    @torch.no_grad()
    def per_class(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.multilabel:
            pred, truth = logits > 0, target > 0.5
        else:
            channels = logits.shape[1]
            pred = _one_hot(logits.argmax(1), channels)[:, 1:] > 0
            truth = _one_hot(target, channels)[:, 1:] > 0
        dims = (0, *range(2, pred.ndim))
        inter = (pred & truth).sum(dims).float()
        total = pred.sum(dims).float() + truth.sum(dims).float()
        return torch.where(total > 0, 2 * inter / total.clamp_min(1), torch.ones_like(total))  # absent: 1

"""biom3d's target conventions, translated for MONAI's losses and metrics.

biom3d hands losses label maps ``(B, D, H, W)`` or ``(B, 1, D, H, W)`` (softmax runs) and multi-label masks
``(B, K, D, H, W)`` (sigmoid runs, ``ctx.multilabel``); MONAI wants ``(B, 1, ...)`` labels with
``to_onehot_y`` or ``(B, C, ...)`` one-hot. Deep-supervision outputs arrive as a list, full resolution first.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F


def use_sigmoid(activation: str, ctx: Any) -> bool:
    """``auto`` follows the run: sigmoid for multi-label masks, softmax over label maps otherwise."""
    if activation == "auto":
        return bool(getattr(ctx, "multilabel", False))
    return activation == "sigmoid"


def label_target(target: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """A ``(B, 1, *S)`` integer label map from a label map with or without its channel, or from a one-hot."""
    if target.dim() == logits.dim() - 1:
        target = target.unsqueeze(1)
    elif target.dim() == logits.dim() and target.shape[1] > 1:
        target = target.argmax(dim=1, keepdim=True)  # one-hot given to a softmax loss
    if target.dim() != logits.dim() or target.shape[1] != 1:
        raise ValueError(f"target of shape {tuple(target.shape)} does not fit logits {tuple(logits.shape)}")
    return target.long()


def multilabel_target(target: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """A float ``(B, C, *S)`` mask: multi-label masks as they are, label maps one-hot over the logits' channels."""
    if target.dim() == logits.dim() - 1 or (
        target.dim() == logits.dim() and target.shape[1] == 1 and logits.shape[1] > 1
    ):
        return one_hot(label_target(target, logits), logits.shape[1]).float()
    if target.shape != logits.shape:
        raise ValueError(
            f"multi-label target of shape {tuple(target.shape)} does not match logits {tuple(logits.shape)}"
        )
    return target.float()


def one_hot(labels: torch.Tensor, channels: int) -> torch.Tensor:
    """``(B, 1, *S)`` integer labels -> ``(B, C, *S)`` one-hot (same dtype family as bool masks)."""
    out = F.one_hot(labels[:, 0].long(), channels)
    return out.movedim(-1, 1)


def resize_target(target: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Nearest-neighbour resize of a ``(B, C, *S)`` target to a deep-supervision output's spatial size."""
    if tuple(target.shape[2:]) == tuple(size):
        return target
    return F.interpolate(target.float(), size=tuple(size), mode="nearest").to(target.dtype)


def deep_supervision_weights(n: int) -> list[float]:
    """nnU-Net's weights: halve per lower resolution, normalised to sum to one."""
    raw = [0.5**i for i in range(n)]
    total = sum(raw)
    return [w / total for w in raw]

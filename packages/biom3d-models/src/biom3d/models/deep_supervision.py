"""The deep-supervision loss wrapper: one inner loss per network head, weights halving per stage (nnU-Net)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def build_deep_supervision(params, ctx) -> DeepSupervisionLoss:
    """Builds the inner loss its params name (already resolved to a qualified id at validation)."""
    from biom3d.core.discovery import get_registry

    inner = get_registry().resolve("metric", params.loss.name).build(params.loss.params, ctx)
    if hasattr(inner, "role"):  # a metric-and-loss such as 'dice' is a loss here
        inner.role = "loss"
    multilabel = getattr(inner, "multilabel", getattr(ctx, "multilabel", False))
    return DeepSupervisionLoss(inner, params.weight_factor, params.skip_lowest, multilabel)


class DeepSupervisionLoss(nn.Module):
    """``sum_i w_i * loss(outputs[i], target resized to outputs[i])`` over outputs ordered full resolution first.

    ``w_i = weight_factor ** i``, zero for the ``skip_lowest`` lowest-resolution heads (never the first one),
    normalised to sum to 1 (nnU-Net v2 drops the lowest head). Label maps are resized with nearest neighbours,
    multi-label or one-hot targets by area averaging (soft targets in [0, 1]). A single tensor (eval-mode output)
    goes to the inner loss as is.
    """

    deep_supervision = True

    def __init__(
        self, inner: nn.Module | Any, weight_factor: float = 0.5, skip_lowest: int = 1, multilabel: bool = False
    ):
        super().__init__()
        self.inner = inner
        self.weight_factor, self.skip_lowest, self.multilabel = weight_factor, skip_lowest, multilabel

    def weights(self, n: int) -> list[float]:
        """Normalised weights of ``n`` heads, full resolution first."""
        kept = max(1, n - self.skip_lowest)
        raw = [self.weight_factor**i if i < kept else 0.0 for i in range(n)]
        total = sum(raw)
        return [w / total for w in raw]

    def forward(self, outputs: torch.Tensor | list[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        if isinstance(outputs, torch.Tensor):
            return self.inner(outputs, target)
        if not outputs:
            raise ValueError("deep-supervision: got an empty list of outputs")
        loss = outputs[0].new_zeros((), dtype=torch.float32)
        for weight, out in zip(self.weights(len(outputs)), outputs, strict=True):
            # zero-weight heads are still computed (cheap at low resolution) so that every parameter gets a
            # gradient, as DistributedDataParallel requires
            loss = loss + weight * self.inner(out, resize_target(target, out, self.multilabel))
        return loss


def resize_target(target: torch.Tensor, logits: torch.Tensor, multilabel: bool) -> torch.Tensor:
    """``target`` at ``logits``' spatial size, keeping its layout (label map with or without channel axis)."""
    size = tuple(logits.shape[2:])
    has_channel = target.dim() == logits.dim()
    if tuple(target.shape[-len(size) :]) == size:
        return target
    t = target if has_channel else target.unsqueeze(1)
    label_map = not multilabel and t.shape[1] == 1
    if label_map:
        t = F.interpolate(t.float(), size=size, mode="nearest").to(target.dtype)
    else:
        t = F.interpolate(t.float(), size=size, mode="area")
    return t if has_channel else t.squeeze(1)

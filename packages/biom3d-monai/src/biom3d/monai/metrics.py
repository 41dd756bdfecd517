"""MONAI's segmentation metrics as biom3d metrics, on discretised predictions.

``metric(logits, target)`` is the mean of ``metric.per_class(logits, target)``, a ``(C,)`` tensor averaged
over the batch. Predictions are discretised first (argmax of softmax runs, ``sigmoid > 0.5`` of multi-label
runs), so these score what the postprocessor would output. A class empty in both prediction and truth is a
perfect score (1 for overlaps, distance 0), never NaN, so empty validation patches do not poison the means.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import torch
from monai.metrics import compute_dice, compute_hausdorff_distance, compute_iou

from biom3d.monai.metricparams import HausdorffParams, OverlapMetricParams
from biom3d.monai.targets import label_target, multilabel_target, one_hot, use_sigmoid

Score = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # one-hot (B, C, *S) pair -> (B, C)


def build_dice_metric(params: OverlapMetricParams, ctx: Any) -> SegMetric:
    return SegMetric(
        partial(compute_dice, include_background=True, ignore_empty=False),
        sigmoid=use_sigmoid(params.activation, ctx),
        include_background=params.include_background,
    )


def build_mean_iou(params: OverlapMetricParams, ctx: Any) -> SegMetric:
    return SegMetric(
        partial(compute_iou, include_background=True, ignore_empty=False),
        sigmoid=use_sigmoid(params.activation, ctx),
        include_background=params.include_background,
    )


def build_hausdorff(params: HausdorffParams, ctx: Any) -> SegMetric:
    spacing = tuple(getattr(ctx, "spacing", None) or ()) if params.physical else ()
    return SegMetric(
        Hausdorff(params.distance_metric, params.percentile, params.directed, spacing or None),
        sigmoid=use_sigmoid(params.activation, ctx),
        include_background=params.include_background,
    )


class SegMetric:
    """Discretise, one-hot, drop the background channel of softmax outputs unless asked, score."""

    def __init__(self, score: Score, *, sigmoid: bool, include_background: bool):
        self.score = score
        self.sigmoid = sigmoid
        self.include_background = include_background

    def class_labels(self, channels: int) -> list[int]:
        """Class of each ``per_class`` entry: 0 is the background when it is scored."""
        first = 0 if (self.include_background and not self.sigmoid) else 1
        return list(range(first, first + channels))

    def __call__(self, logits: torch.Tensor | Sequence[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        return self.per_class(logits, target).mean()

    @torch.no_grad()
    def per_class(self, logits: torch.Tensor | Sequence[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        if not isinstance(logits, torch.Tensor):  # deep supervision: score the full-resolution output
            logits = logits[0]
        logits = logits.detach()
        if self.sigmoid:
            pred = (logits > 0).float()  # sigmoid > 0.5
            truth = (multilabel_target(target, logits) > 0.5).float()
        else:
            channels = logits.shape[1]
            pred = one_hot(logits.argmax(dim=1, keepdim=True), channels).float()
            truth = one_hot(label_target(target, logits), channels).float()
            if not self.include_background:
                pred, truth = pred[:, 1:], truth[:, 1:]
        return self.score(pred, truth).float().mean(dim=0)


class Hausdorff:
    """MONAI's Hausdorff distance per (image, class), with defined values where it has none: 0 when both
    masks are empty, the image diagonal (the largest possible distance) when exactly one is."""

    def __init__(self, distance_metric: str, percentile: float | None, directed: bool, spacing: Sequence[float] | None):
        self.distance_metric = distance_metric
        self.percentile = percentile
        self.directed = directed
        self.spacing = tuple(spacing) if spacing else None

    def __call__(self, pred: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
        batch, channels, *shape = pred.shape
        spacing = self.spacing if self.spacing and len(self.spacing) == len(shape) else None
        diagonal = math.sqrt(sum(((s - 1) * (spacing[i] if spacing else 1.0)) ** 2 for i, s in enumerate(shape)))
        out = torch.zeros((batch, channels), dtype=torch.float32, device=pred.device)
        for b in range(batch):
            for c in range(channels):
                p, t = pred[b : b + 1, c : c + 1], truth[b : b + 1, c : c + 1]
                has_p, has_t = bool(p.any()), bool(t.any())
                if has_p and has_t:
                    with warnings.catch_warnings():  # MONAI 1.5+ warns about its own internal call
                        warnings.filterwarnings("ignore", message=".*always_return_as_numpy", category=FutureWarning)
                        out[b, c] = compute_hausdorff_distance(
                            p,
                            t,
                            include_background=True,
                            distance_metric=self.distance_metric,
                            percentile=self.percentile,
                            directed=self.directed,
                            spacing=spacing,
                        )[0, 0]
                elif has_p or has_t:
                    out[b, c] = diagonal
        return out

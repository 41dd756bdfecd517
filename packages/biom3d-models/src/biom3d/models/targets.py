"""Target handling shared by losses and metrics: check that a target fits the model output, then make it dense.

Two modes (``protocols`` array conventions): softmax outputs ``(B, C, D, H, W)`` with label maps ``(B, D, H, W)``
or ``(B, 1, D, H, W)`` of integers in ``[0, C)`` (or a one-hot ``(B, C, D, H, W)``); sigmoid (multi-label)
outputs ``(B, K, D, H, W)`` with targets ``(B, K, D, H, W)`` in ``[0, 1]`` (``(B, D, H, W)`` when ``K = 1``).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F


def dense_target(name: str, logits: Any, target: torch.Tensor, multilabel: bool) -> torch.Tensor:
    """A float target shaped like ``logits``: one-hot of a label map, or the multi-label mask as is.

    Raises a ValueError naming ``name`` and both shapes when they do not fit.
    """
    check_single(name, logits)
    if logits.dim() < 3:
        raise ValueError(f"{name}: expected outputs (B, C, D, H, W), got {tuple(logits.shape)}")
    channels = logits.shape[1]

    def fail(reason: str) -> ValueError:
        return ValueError(
            f"{name}: model output {tuple(logits.shape)} and target {tuple(target.shape)} do not fit: {reason}"
        )

    full = target.dim() == logits.dim()
    if full and target.shape[1] == channels and (multilabel or channels > 1):
        dense = target.float()
        low, high = _extrema(dense)
        if low < 0 or high > 1:
            raise fail(
                f"{'multi-label' if multilabel else 'one-hot'} targets must lie in [0, 1], found [{low:g}, {high:g}]"
            )
    elif multilabel:
        if full or channels != 1 or target.dim() != logits.dim() - 1:
            raise fail(
                f"multi-label (sigmoid) targets must be (B, {channels}, D, H, W)"
                + (" or (B, D, H, W)" if channels == 1 else "")
            )
        dense = target.float().unsqueeze(1)
        low, high = _extrema(dense)
        if low < 0 or high > 1:
            raise fail(f"binary targets must lie in [0, 1], found [{low:g}, {high:g}]")
    else:
        if channels < 2:
            raise fail(
                "softmax outputs need one channel per class plus background; for one sigmoid channel set "
                "multilabel: true"
            )
        if full and target.shape[1] != 1:
            raise fail(f"expected a label map (B, D, H, W) or (B, 1, D, H, W), or a one-hot (B, {channels}, D, H, W)")
        labels = target[:, 0] if full else target
        if labels.dim() != logits.dim() - 1:
            raise fail("expected a label map (B, D, H, W)")
        _check_sizes(labels.shape, logits.shape, fail)
        low, high = _extrema(labels)
        if low < 0 or high >= channels or (labels.is_floating_point() and not torch.equal(labels, labels.round())):
            raise fail(
                f"label values must be integers in [0, {channels - 1}] (out_channels = {channels}), "
                f"found [{low:g}, {high:g}]"
            )
        return F.one_hot(labels.long(), channels).movedim(-1, 1).float()
    _check_sizes(dense.shape[:1] + dense.shape[2:], logits.shape, fail)
    return dense


def check_single(name: str, logits: Any) -> None:
    """A list of outputs comes from deep supervision: only the wrapper loss knows how to weigh them."""
    if isinstance(logits, list | tuple):
        raise ValueError(
            f"{name}: got a list of {len(logits)} outputs: the model has deep_supervision on. Wrap the loss: "
            f"`loss: {{name: deep-supervision, params: {{loss: {{name: {name}}}}}}}` (metrics take outputs[0])"
        )
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"{name}: expected a logits tensor, got {type(logits).__name__}")


def multilabel_mode(param: bool | None, ctx: Any) -> bool:
    """The params' choice, else the run's."""
    return bool(getattr(ctx, "multilabel", False)) if param is None else param


def discretise(logits: torch.Tensor, multilabel: bool) -> torch.Tensor:
    """Hard one-hot predictions: sigmoid > 0.5 (logits > 0) per channel, or argmax over channels."""
    if multilabel:
        return (logits > 0).float()
    return F.one_hot(logits.argmax(1), logits.shape[1]).movedim(-1, 1).float()


def _check_sizes(target_shape: torch.Size, logits_shape: torch.Size, fail) -> None:
    """``target_shape`` is (B, *spatial)."""
    if target_shape[0] != logits_shape[0]:
        raise fail("batch sizes differ")
    if tuple(target_shape[1:]) != tuple(logits_shape[2:]):
        raise fail(f"spatial sizes differ ({tuple(target_shape[1:])} vs {tuple(logits_shape[2:])})")


def _extrema(t: torch.Tensor) -> tuple[float, float]:
    if t.numel() == 0:
        return 0.0, 0.0
    low, high = torch.aminmax(t.float() if t.dtype == torch.bool else t)
    return float(low), float(high)

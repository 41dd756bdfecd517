"""Resampling of images, label masks and probability maps with torch (fast on CPU, no extra dependency).

Anisotropic volumes (one axis > ``anisotropy`` x coarser than the finest) are resampled as nnU-Net does:
in-plane first with the requested interpolation, then along the coarse axis with nearest neighbours, so
thick slices are never blended into each other.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch is imported only when something is resampled: workers that only scan skip it
    import torch


def target_shape(shape: Sequence[int], spacing: Sequence[float], target: Sequence[float]) -> tuple[int, ...]:
    return tuple(max(1, int(round(s * sp / t))) for s, sp, t in zip(shape, spacing, target, strict=True))


def coarse_axis(spacing: Sequence[float] | None, anisotropy: float) -> int | None:
    """The axis whose spacing is over ``anisotropy`` times the finest, if exactly one is."""
    if spacing is None:
        return None
    finest = min(spacing)
    coarse = [i for i, s in enumerate(spacing) if s > anisotropy * finest]
    return coarse[0] if len(coarse) == 1 else None


def resample_image(
    image: np.ndarray, shape: Sequence[int], *, order: int = 1, coarse: int | None = None
) -> np.ndarray:
    """(C, D, H, W) float image to ``shape`` (spatial), linear (order 1) or cubic (order 3)."""
    if tuple(image.shape[1:]) == tuple(shape):
        return image
    if order == 3:
        return _cubic(image, shape, coarse)
    import torch

    return _torch_resample(torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)), shape, coarse).numpy()


def resample_labels(mask: np.ndarray, shape: Sequence[int], *, num_labels: int, labelwise: bool = True,
                    coarse: int | None = None) -> np.ndarray:
    """(D, H, W) label map to ``shape``: per-label linear interpolation then argmax, or nearest."""
    if tuple(mask.shape) == tuple(shape):
        return mask
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(np.ascontiguousarray(mask).astype(np.int64))
    if not labelwise:
        out = F.interpolate(t[None, None].float(), size=tuple(shape), mode="nearest-exact")[0, 0]
        return out.numpy().astype(mask.dtype)
    best_score = best_label = None
    for label in range(num_labels):  # one label at a time keeps memory at two full-size buffers
        score = _torch_resample((t == label).float()[None], shape, coarse)[0]
        if best_score is None:
            best_score, best_label = score, torch.zeros(score.shape, dtype=torch.int64)
        else:
            better = score > best_score
            best_score = torch.where(better, score, best_score)
            best_label[better] = label
    return best_label.numpy().astype(mask.dtype)


def resample_multilabel(mask: np.ndarray, shape: Sequence[int], *, coarse: int | None = None) -> np.ndarray:
    """(K, D, H, W) {0,1} masks to ``shape`` by linear interpolation and a 0.5 threshold."""
    if tuple(mask.shape[1:]) == tuple(shape):
        return mask
    import torch

    out = _torch_resample(torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32)), shape, coarse)
    return (out > 0.5).numpy().astype(mask.dtype)


def resize_probabilities(probs: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """(C, d, h, w) probabilities back onto the original grid (trilinear)."""
    if tuple(probs.shape[1:]) == tuple(shape):
        return probs
    import torch.nn.functional as F

    return F.interpolate(probs[None].float(), size=tuple(shape), mode="trilinear", align_corners=False)[0]


def _torch_resample(x: torch.Tensor, shape: Sequence[int], coarse: int | None) -> torch.Tensor:
    """(C, D, H, W) -> (C, *shape): trilinear, or in-plane linear then nearest along ``coarse``."""
    import torch.nn.functional as F

    shape = tuple(int(s) for s in shape)
    if coarse is None:
        return F.interpolate(x[None], size=shape, mode="trilinear", align_corners=False)[0]
    inplane = list(shape)
    inplane[coarse] = x.shape[1 + coarse]
    y = F.interpolate(x[None], size=tuple(inplane), mode="trilinear", align_corners=False)
    return F.interpolate(y, size=shape, mode="nearest-exact")[0]


def _cubic(image: np.ndarray, shape: Sequence[int], coarse: int | None) -> np.ndarray:
    from scipy import ndimage

    out = []
    for channel in image.astype(np.float32):
        factors = [t / s for t, s in zip(shape, channel.shape, strict=True)]
        if coarse is not None:
            inplane = list(factors)
            inplane[coarse] = 1.0
            channel = ndimage.zoom(channel, inplane, order=3, mode="nearest", grid_mode=True)
            factors = [t / s for t, s in zip(shape, channel.shape, strict=True)]
            channel = ndimage.zoom(channel, factors, order=0, mode="nearest", grid_mode=True)
        else:
            channel = ndimage.zoom(channel, factors, order=3, mode="nearest", grid_mode=True)
        out.append(channel)
    return np.stack(out).astype(np.float32)

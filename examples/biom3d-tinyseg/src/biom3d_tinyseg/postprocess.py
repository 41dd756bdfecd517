"""A postprocessor (:class:`biom3d.core.protocols.Postprocessor`), chained after ``core/discretize``: it receives
a mask, label map (D, H, W) or multi-label (K, D, H, W), and returns one of the same shape."""

from __future__ import annotations

import numpy as np


def build_min_volume(params, ctx) -> MinVolume:
    return MinVolume(params.min_voxels)


class MinVolume:
    def __init__(self, min_voxels: int):
        self.min_voxels = min_voxels

    def __call__(self, data: np.ndarray) -> np.ndarray:
        mask = np.array(data, copy=True)
        if mask.ndim == 4:  # multi-label: one channel per class
            for channel in mask:
                if channel.sum() < self.min_voxels:
                    channel[...] = 0
            return mask
        labels, counts = np.unique(mask, return_counts=True)
        for label, count in zip(labels, counts, strict=True):
            if label != 0 and count < self.min_voxels:
                mask[mask == label] = 0
        return mask

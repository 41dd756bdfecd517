"""Post-processing builtins, chained in the config's ``postprocessors`` list: the first one discretises
probabilities (argmax, or a threshold for multi-label outputs), the next ones clean masks per class."""

from __future__ import annotations

import numpy as np


def build_argmax(params, ctx):
    return Argmax()


def build_threshold(params, ctx):
    return Threshold(params.threshold)


def build_discretize(params, ctx):
    """The run decides: sigmoid outputs are thresholded, softmax outputs argmaxed."""
    return Threshold(params.threshold) if ctx.multilabel else Argmax()


def build_keep_largest(params, ctx):
    return KeepLargest(params.classes)


def build_remove_small(params, ctx):
    return RemoveSmall(params.classes, params.min_size)


class Argmax:
    """Softmax probabilities (C, D, H, W) -> label map (D, H, W), 0 = background."""

    def __call__(self, probs) -> np.ndarray:
        probs = np.asarray(probs)
        dtype = np.uint8 if probs.shape[0] <= 256 else np.uint16
        return probs.argmax(axis=0).astype(dtype)


class Threshold:
    """Sigmoid probabilities (K, D, H, W) -> multi-label mask (K, D, H, W) in {0, 1}."""

    def __init__(self, threshold: float):
        self.threshold = threshold

    def __call__(self, probs) -> np.ndarray:
        return (np.asarray(probs) > self.threshold).astype(np.uint8)


class _PerClass:
    """Applies ``clean(binary) -> binary`` to each class of a label map or each channel of a multi-label mask."""

    def __init__(self, classes):
        self.classes = classes

    def __call__(self, mask) -> np.ndarray:
        mask = np.asarray(mask).copy()
        if mask.ndim == 4:
            for k in range(mask.shape[0]):
                if self.classes is None or k + 1 in self.classes:
                    mask[k] = self.clean(mask[k] > 0)
            return mask
        labels = [int(v) for v in np.unique(mask) if v != 0]
        for k in labels:
            if self.classes is not None and k not in self.classes:
                continue
            region = mask == k
            kept = self.clean(region)
            mask[region & ~kept] = 0
        return mask

    def clean(self, binary: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class KeepLargest(_PerClass):
    """Keep only the largest connected component of each class."""

    def clean(self, binary: np.ndarray) -> np.ndarray:
        labels, sizes = _components(binary)
        if len(sizes) <= 1:
            return binary
        return labels == (int(np.argmax(sizes)) + 1)


class RemoveSmall(_PerClass):
    """Drop connected components smaller than ``min_size`` voxels, or, by default, smaller than the Otsu
    threshold of the component volumes (which separates objects from noise without a size to tune)."""

    def __init__(self, classes, min_size: int | None):
        super().__init__(classes)
        self.min_size = min_size

    def clean(self, binary: np.ndarray) -> np.ndarray:
        labels, sizes = _components(binary)
        if len(sizes) <= 1:
            return binary
        if self.min_size is not None:
            threshold = self.min_size
        else:
            from skimage.filters import threshold_otsu

            if np.all(sizes == sizes[0]):
                return binary
            threshold = threshold_otsu(sizes.astype(float))
        keep = np.concatenate([[False], sizes >= threshold])
        return keep[labels]


def _components(binary: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from scipy import ndimage

    labels, n = ndimage.label(binary)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    return labels, sizes

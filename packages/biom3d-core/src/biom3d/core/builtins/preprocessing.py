"""The default preprocessor (``core/seg-preprocess``): one transform for training data and for prediction.

Images become (C, D, H, W) float32: channel axis detected (or given), z-score or CT normalisation, resampled
to the dataset's median spacing. Masks are checked and corrected (dimension order, 0/255 or grey-level
labels, one-hot) or refused with the file and values named, then resampled with the image. At prediction the
run's channel count is known, so the channel-axis guess follows it: a 4 x 8 x 8 volume is not four channels
for a one-channel model because a bare TIFF calls its first axis C.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from biom3d.core.alignment import align_mask
from biom3d.core.builtins.resample import (
    coarse_axis,
    resample_image,
    resample_labels,
    resample_multilabel,
    resize_probabilities,
    target_shape,
)
from biom3d.core.builtins.spacing import spacing_3d
from biom3d.core.errors import DataError
from biom3d.core.imagedata import ImageData, in_axes_order, mask_channels_first
from biom3d.core.protocols import CaseStats

log = logging.getLogger("biom3d")
MAX_CHANNELS = 10
KNOWN_AXES = "CZYXST"  # what in_axes_order places; any other letter is an axis the reader could not name
INTENSITY_SAMPLES = 10_000
AUTO_BINARIZE_LEVELS = 4  # K=1 masks with this few levels are thresholded (paper); more is refused


def build_preprocessor(params, ctx) -> SegPreprocessor:
    return SegPreprocessor(params, ctx)


class SegPreprocessor:
    """Implements :class:`biom3d.core.protocols.Preprocessor`; the public steps below it are what the
    protocol methods compose, kept separate for tests and for plugins that reuse a step."""

    def __init__(self, params, ctx):
        self.params = params
        self.num_classes = ctx.num_classes
        self.multilabel = ctx.multilabel
        self.in_channels = ctx.in_channels  # the run's, at prediction (not known yet when preprocessing)

    # -- the protocol --------------------------------------------------------------------------------------
    def analyse(self, key: str, image: ImageData, mask: ImageData) -> CaseStats:
        array, axis = self.image_array(image)
        labels, warnings = self.mask_array(mask, array.shape[1:], image)
        stats = self.stats(key, array, labels, spacing_3d(image, array.shape[1:]), axis, warnings)
        stats.unit = stats.unit or (image.meta or {}).get("unit")
        stats.extra["mask"] = str(mask.path)
        stats.extra["foreground"] = int(np.count_nonzero(labels))
        if not stats.extra["foreground"]:
            stats.warnings.append(f"mask {mask.path}: no foreground (every voxel is background); the case trains "
                                  "the background only")
        return stats

    def fingerprint(self, stats: Sequence[CaseStats]) -> dict[str, Any]:
        """The dataset's fingerprint; refused when no mask has any foreground, which nothing can learn from
        (every validation Dice would be 0)."""
        from biom3d.core.builtins.fingerprint import build_fingerprint

        if stats and all(s.extra.get("foreground") == 0 for s in stats):
            names = ", ".join(str(s.extra.get("mask", s.key)) for s in stats[:3]) + (", ..." if len(stats) > 3 else "")
            raise DataError(f"no mask has any foreground: all {len(stats)} masks ({names}) hold background only. "
                            "Check that --masks points at the masks, that foreground voxels are labelled 1.."
                            f"{self.num_classes} (not 0), and --num-classes")
        return build_fingerprint(stats, num_classes=self.num_classes, multilabel=self.multilabel,
                                 resample=self.params.resample)

    def plan(self, fingerprint: Mapping[str, Any], budget) -> dict[str, Any]:
        """The paper's auto-configuration from the median shape, its batch capped by the number of images."""
        from biom3d.core.builtins.autoconfig import auto_config

        return auto_config(self.plan_median(fingerprint), max_dim=budget.max_dim, max_pool=budget.max_pool,
                           num_images=fingerprint["num_images"], max_batch=budget.max_batch).as_dict()

    def plan_median(self, fingerprint: Mapping[str, Any]) -> list[float]:
        """The median shape :meth:`plan` reads (``plan_from``): the stored images', as the original biom3d."""
        stored = fingerprint.get("original_median_shape")
        return list(stored if self.params.plan_from == "stored" and stored else fingerprint["median_shape"])

    def case(self, image: ImageData, mask: ImageData, fingerprint: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        array, _ = self.image_array(image)
        labels, _ = self.mask_array(mask, array.shape[1:], image)
        array = self.transform_image(array, spacing_3d(image, array.shape[1:], fingerprint), fingerprint)
        return array, self.resample_mask(labels, array.shape[1:], fingerprint)

    def image(self, image: ImageData, fingerprint: Mapping[str, Any]) -> np.ndarray:
        array, _ = self.image_array(image, channels=fingerprint.get("in_channels", self.in_channels))
        return self.transform_image(array, spacing_3d(image, array.shape[1:], fingerprint), fingerprint)

    def restore(self, probs, image: ImageData):
        """Probabilities (C, d, h, w) tensor back to ``image``'s own spatial grid."""
        spatial = to_channels_first(np.asarray(image.array), image.meta.get("axes"), self.params.channel_axis,
                                    image.path, channels=self.in_channels, warn=False)[0].shape[1:]
        return resize_probabilities(probs, spatial)

    # -- images --------------------------------------------------------------------------------------------
    def image_array(self, img: ImageData, channels: int | None = None) -> tuple[np.ndarray, int | None]:
        """(C, D, H, W) float32 and the channel axis found in the stored array (None: no channel axis);
        ``channels``, when known (prediction), settles an ambiguous layout."""
        arr = np.asarray(img.array)
        arr, axis = to_channels_first(arr, img.meta.get("axes"), self.params.channel_axis, img.path, channels=channels)
        if not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
            raise DataError(f"{img.path}: pixel type {arr.dtype} is not a real number type")
        arr = arr.astype(np.float32, copy=False)
        if not np.isfinite(arr).all():
            bad = int((~np.isfinite(arr)).sum())
            raise DataError(f"{img.path}: {bad} voxels are NaN or infinite; fix or mask them before training")
        return arr, axis

    def stats(self, key: str, image: np.ndarray, mask: np.ndarray | None, spacing, axis, warnings) -> CaseStats:
        """Shape, spacing and a sample of foreground intensities per channel."""
        if mask is not None:
            fg = mask.any(axis=0) if mask.ndim == 4 else mask > 0
        else:
            fg = np.ones(image.shape[1:], dtype=bool)
        idx = np.flatnonzero(fg)
        rng = np.random.default_rng(zlib.crc32(key.encode()))
        if idx.size > INTENSITY_SAMPLES:
            idx = rng.choice(idx, INTENSITY_SAMPLES, replace=False)
        samples = [image[c].reshape(-1)[idx].astype(float).tolist() for c in range(image.shape[0])]
        return CaseStats(key, tuple(image.shape[1:]), None if spacing is None else tuple(spacing), image.shape[0],
                         extra={"channel_axis": axis, "samples": samples}, warnings=list(warnings))

    def transform_image(self, image: np.ndarray, spacing, fingerprint: Mapping[str, Any]) -> np.ndarray:
        """Normalise then resample a (C, D, H, W) image as the dataset was."""
        image = self.normalize(image, fingerprint)
        shape = self.new_shape(image.shape[1:], spacing, fingerprint)
        coarse = coarse_axis(fingerprint.get("spacing"), self.params.anisotropy)
        return resample_image(image, shape, order=self.params.image_order, coarse=coarse)

    def normalize(self, image: np.ndarray, fingerprint: Mapping[str, Any]) -> np.ndarray:
        out = np.empty_like(image, dtype=np.float32)
        if self.params.norm != "ct" and self.params.zscore_over == "image":
            out[...] = (image - float(image.mean())) / max(float(image.std()), 1e-8)
            return out
        for c in range(image.shape[0]):
            x = image[c]
            if self.params.norm == "ct":
                stats = fingerprint["intensity"][c]
                x = np.clip(x, stats["p00_5"], stats["p99_5"])
                mean, std = stats["mean"], stats["std"]
            else:
                mean, std = float(x.mean()), float(x.std())
            out[c] = (x - mean) / max(std, 1e-8)
        return out

    def new_shape(self, shape, spacing, fingerprint: Mapping[str, Any]) -> tuple[int, ...]:
        target = fingerprint.get("spacing")
        if not self.params.resample or target is None or spacing is None:
            return tuple(shape)
        return target_shape(shape, spacing, target)

    # -- masks ---------------------------------------------------------------------------------------------
    def mask_array(self, msk: ImageData, image_shape: Sequence[int],
                   image: ImageData | None = None) -> tuple[np.ndarray, list[str]]:
        """The canonical mask, first put in ``image``'s voxel order when their headers say it is stored otherwise
        (:func:`biom3d.core.alignment.align_mask`)."""
        array, notes = align_mask(np.asarray(msk.array), msk, image) if image is not None else (msk.array, [])
        labels, warnings = canonical_mask(np.asarray(array), tuple(image_shape), self.num_classes, self.multilabel,
                                          self.params.mask_fix, msk.path, axes=msk.meta.get("axes"))
        return labels, notes + warnings

    def resample_mask(self, mask: np.ndarray, shape: Sequence[int], fingerprint: Mapping[str, Any]) -> np.ndarray:
        """Resample a canonical mask onto the grid of the processed image (``shape``)."""
        coarse = coarse_axis(fingerprint.get("spacing"), self.params.anisotropy)
        if mask.ndim == 4:
            return resample_multilabel(mask, shape, coarse=coarse)
        return resample_labels(mask, shape, num_labels=self.num_classes + 1,
                               labelwise=self.params.mask_interp == "labelwise", coarse=coarse)

    def foreground(self, mask: np.ndarray, key: str) -> dict[str, np.ndarray]:
        """Up to ``fg_samples`` voxel coordinates per class, for foreground-biased patch sampling."""
        rng = np.random.default_rng(zlib.crc32(key.encode()) + 1)
        out = {}
        for k in range(1, self.num_classes + 1):
            hit = mask[k - 1] if mask.ndim == 4 else mask == k
            idx = np.flatnonzero(hit)
            if idx.size > self.params.fg_samples:
                idx = np.sort(rng.choice(idx, self.params.fg_samples, replace=False))
            spatial = mask.shape[1:] if mask.ndim == 4 else mask.shape
            out[str(k)] = np.stack(np.unravel_index(idx, spatial), axis=1).astype(np.int32)
        return out


def to_channels_first(arr: np.ndarray, axes: str | None, channel_axis: int | None, path, *,
                      channels: int | None = None, warn: bool = True) -> tuple[np.ndarray, int | None]:
    """(C, D, H, W) view of an image stored with or without a channel axis, 2D or 3D. With ``channels`` (the
    run's count): three axes whose first the file calls C are a volume for a one-channel run, and of two
    candidate channel axes of a 4D array the one with that many channels wins."""
    if channel_axis is not None:
        if arr.ndim not in (3, 4) or not -arr.ndim <= channel_axis < arr.ndim:
            raise DataError(f"{path}: channel axis {channel_axis} does not fit an array of shape {arr.shape}")
        axis = channel_axis % arr.ndim
        arr = np.moveaxis(arr, axis, 0)
        return (arr[:, None] if arr.ndim == 3 else arr), axis
    # axes a reader could not name (tifffile's Q of a TIFF without metadata) say nothing: the shape decides
    if axes and len(axes) == arr.ndim and set(axes.upper()) <= set(KNOWN_AXES):
        found = _from_axes(arr, axes.upper(), path)
        if channels == 1 and arr.ndim == 3 and axes.upper().startswith("C") and arr.shape[0] > 1:
            if warn:
                log.warning("%s: the file calls its first axis (%d) channels, but the run has one channel: read as a "
                            "volume of %d slices", path, arr.shape[0], arr.shape[0])
            return arr[None], None
        return found
    if arr.ndim > 4:
        keep = [i for i, s in enumerate(arr.shape) if s != 1]
        if len(keep) <= 4:
            return to_channels_first(arr.reshape([arr.shape[i] for i in keep]), None, None, path, channels=channels)
    if arr.ndim == 2:
        return arr[None, None], None
    if arr.ndim == 3:
        return arr[None], None
    if arr.ndim == 4:
        small = [i for i in (0, 3) if arr.shape[i] <= MAX_CHANNELS and arr.shape[i] < min(arr.shape[1:3])]
        if channels is not None:
            small = [i for i in (0, 3) if arr.shape[i] == channels] or small
        if len(small) == 1 or (len(small) == 2 and arr.shape[0] != arr.shape[3]):
            axis = min(small, key=lambda i: arr.shape[i])
            return np.moveaxis(arr, axis, 0), axis
    raise DataError(
        f"{path}: cannot tell which axis of shape {tuple(arr.shape)} holds the channels; pass --channel-axis to "
        "`biom3d preprocess` or `biom3d run` (preprocessor.params.channel_axis in a config; predict follows the run's)"
    )


def _from_axes(arr: np.ndarray, axes: str, path) -> tuple[np.ndarray, int | None]:
    arr, present, channel = in_axes_order(arr, axes, path)
    if "C" not in present:
        arr = arr[None]
    if "Z" not in present:
        arr = arr[:, None]
    return arr, channel


def canonical_mask(arr: np.ndarray, image_shape: tuple[int, ...], num_classes: int, multilabel: bool,
                   policy: str, path, *, axes: str | None = None) -> tuple[np.ndarray, list[str]]:
    """A (D, H, W) label map or (K, D, H, W) multi-label mask matching ``image_shape`` (a 2D image's: (1, H, W)),
    and what was fixed. ``axes``, when the reader names them, place the channels of a multi-label mask (ImageJ
    stores ZCYX, NIfTI ZYXC); without them, channels are first or last."""
    warnings: list[str] = []
    flat = len(image_shape) == 3 and image_shape[0] == 1
    arr = mask_channels_first(arr, axes, path)
    if arr.ndim > 4 or (arr.ndim == 4 and 1 in arr.shape and not (flat and arr.shape[1] == 1)):
        arr = arr.reshape([s for s in arr.shape if s != 1] or [1])  # (K, 1, H, W): a 2D image's channels, kept
    if arr.ndim == 2 and flat:
        arr = arr[None]
    elif arr.ndim == 3 and flat and arr.shape[0] > 1 and arr.shape[1:] == tuple(image_shape[1:]):
        arr = arr[:, None]  # (K, H, W) channels of a 2D image
    if not np.issubdtype(arr.dtype, np.number):
        raise DataError(f"mask {path}: pixel type {arr.dtype} is not numeric")
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        raise DataError(f"mask {path}: contains NaN or infinite values")
    if arr.ndim == 4:
        return _four_d_mask(arr, image_shape, num_classes, multilabel, path, warnings)
    if arr.ndim != 3:
        raise DataError(f"mask {path}: shape {tuple(arr.shape)} is neither a 3D label map nor a 4D one-hot mask")
    arr = _match_shape(arr, image_shape, path, warnings)
    labels = _fix_levels(arr, num_classes, policy, path, warnings)
    if multilabel:
        labels = np.stack([labels == k for k in range(1, num_classes + 1)]).astype(np.uint8)
        warnings.append(f"mask {path}: label map converted to {num_classes} multi-label channels")
    return labels, warnings


def _four_d_mask(arr, image_shape, num_classes, multilabel, path, warnings):
    sizes = {num_classes, num_classes + 1}
    axis = 0 if arr.shape[0] in sizes else (3 if arr.shape[3] in sizes else None)
    if axis is None:
        raise DataError(f"mask {path}: 4D shape {tuple(arr.shape)} has no axis of {num_classes} or "
                        f"{num_classes + 1} channels for {num_classes} class(es)")
    arr = np.moveaxis(arr, axis, 0)
    spatial = _match_shape(arr[0], image_shape, path, warnings).shape
    if spatial != arr.shape[1:]:
        arr = np.stack([_match_shape(a, image_shape, path, []) for a in arr])
    binary = arr > (arr.max() / 2 if arr.max() > 1 else 0)
    if not np.array_equal(binary, arr.astype(bool)) or arr.max() > 1:
        warnings.append(f"mask {path}: channel values rescaled to 0/1")
    if binary.shape[0] == num_classes + 1:
        binary = binary[1:]  # first channel is background
    if multilabel:
        return binary.astype(np.uint8), warnings
    labels = np.zeros(binary.shape[1:], dtype=np.uint8 if num_classes < 255 else np.uint16)
    for k in range(binary.shape[0]):
        labels[binary[k]] = k + 1
    warnings.append(f"mask {path}: one-hot mask converted to a label map")
    return labels, warnings


def _match_shape(arr, image_shape, path, warnings):
    if tuple(arr.shape) == tuple(image_shape):
        return arr
    if sorted(arr.shape) == sorted(image_shape):
        perm = _permutation(arr.shape, image_shape)
        if perm is not None:
            warnings.append(f"mask {path}: axes reordered {tuple(arr.shape)} -> {tuple(image_shape)} to match its image")
            return np.transpose(arr, perm)
    raise DataError(f"mask {path}: shape {tuple(arr.shape)} does not match its image's {tuple(image_shape)}; "
                    "check that the mask belongs to this image and has the same dimensions")


def _permutation(shape, target):
    if len(set(target)) != len(target):
        return None  # ambiguous: two axes of equal size could be swapped
    return [list(shape).index(t) for t in target]


def _fix_levels(arr: np.ndarray, num_classes: int, policy: str, path, warnings) -> np.ndarray:
    dtype = np.uint8 if num_classes < 255 else np.uint16
    values = np.unique(arr)
    integral = np.all(np.mod(values, 1) == 0)
    if integral and values.min() >= 0 and values.max() <= num_classes:
        return arr.astype(dtype, copy=False)
    shown = ", ".join(str(v) for v in values[:8]) + (", ..." if len(values) > 8 else "")
    refuse = DataError(
        f"mask {path}: {len(values)} grey levels ({shown}) for {num_classes} class(es); expected integer labels "
        f"0..{num_classes}. Fix the mask, pass the right --num-classes, or, for an instance-label mask of one "
        "class, use --mask-fix binarize"
    )
    if policy == "strict":
        raise refuse
    if len(values) <= num_classes + 1:
        warnings.append(f"mask {path}: grey levels {values.tolist()} relabelled to 0..{len(values) - 1}")
        return np.searchsorted(values, arr).astype(dtype)  # values are sorted: each level -> its rank
    if num_classes == 1 and (policy == "binarize" or len(values) <= AUTO_BINARIZE_LEVELS):
        counts = [(arr == v).sum() for v in values]
        background = values[int(np.argmax(counts))]
        warnings.append(f"mask {path}: {len(values)} levels thresholded, {background} (most frequent) as background")
        return (arr != background).astype(dtype)
    raise refuse

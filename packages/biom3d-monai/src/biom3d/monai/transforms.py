"""The MONAI dictionary-transform chains of :mod:`biom3d.monai.dataset`: crop, then augment.

Patches are sampled with ``PadEndd`` (to the patch size, at the end of each axis so the stored foreground
coordinates stay valid) and ``RandCropByPosNegLabeld`` fed with precomputed centre candidates (the dataset's
``fg_indices``/``bg_indices``), so MONAI never scans a whole label map. On memory-mapped input the crop is a
view: only the cropped window is read from disk, then copied (``OwnArraysd``) before any augmentation writes.

Padding never looks like tissue: the image is padded with its background (the per-channel minimum the
dataset hands over as a ``pad_value`` callable, evaluated only when a crop leaves the volume; zero is the
z-scored *mean*), masks with 0. Crops stay inside the volume on every axis the volume covers. A ``valid`` key
(validation items: 1 inside the volume) is padded with 0 and cropped with the rest.

Rotations and scalings need context around the patch, so training then crops an enlarged box (core's
``aug_patch_size``) around the same centre and centre-crops to the patch after ``RandAffined``.
``RandPosNegWindowd`` does that: MONAI's own pos/neg centre generator (what ``RandCropByPosNegLabeld``
runs), with the centre kept valid for the *patch*, and the enlarged window read from the memory map, padded
with the background outside the volume. Cropping the enlarged box with ``RandCropByPosNegLabeld`` instead
would keep the box inside the volume, so a border strip (half the enlargement) would never be seen in training.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.transforms import (
    CenterSpatialCropd,
    Compose,
    MapTransform,
    RandAdjustContrastd,
    RandAffined,
    RandCropByPosNegLabeld,
    RandFlipd,
    RandGaussianNoised,
    RandGaussianSmoothd,
    Randomizable,
    RandScaleIntensityd,
)
from monai.transforms.utils import generate_pos_neg_label_crop_centers

from biom3d.monai.dataparams import MonaiDatasetParams

KEYS = ("image", "mask")
FG, BG = "fg_indices", "bg_indices"
PAD, VALID = "pad_value", "valid"


def train_transforms(
    patch: Sequence[int], crop: Sequence[int], plane: Sequence[int], params: MonaiDatasetParams
) -> Compose:
    """Sample a pos/neg patch centre (with an enlarged box around it when ``crop`` is larger), augment
    spatially, centre-crop to ``patch``, augment intensities."""
    if tuple(crop) == tuple(patch):
        chain: list[Any] = _sampling(patch, params.pos, params.neg)
    else:
        chain = [RandPosNegWindowd(KEYS, patch=patch, window=crop, pos=params.pos, neg=params.neg)]
    if params.augment:
        if params.affine_prob > 0:
            chain.append(
                RandAffined(
                    keys=KEYS,
                    prob=params.affine_prob,
                    rotate_range=rotate_range(plane, params.rotate_degrees, len(patch)),
                    scale_range=(params.scale_range,) * len(patch),
                    mode=("bilinear", "nearest"),
                    padding_mode="zeros",
                )
            )
        if tuple(crop) != tuple(patch):
            chain.append(CenterSpatialCropd(keys=KEYS, roi_size=tuple(patch)))
        if params.flip_prob > 0:
            chain += [RandFlipd(keys=KEYS, prob=params.flip_prob, spatial_axis=axis) for axis in range(len(patch))]
        if params.noise_prob > 0:
            chain.append(RandGaussianNoised(keys="image", prob=params.noise_prob, std=params.noise_std))
        if params.smooth_prob > 0:
            sigma = (0.5, 1.0)
            chain.append(
                RandGaussianSmoothd(keys="image", prob=params.smooth_prob, sigma_x=sigma, sigma_y=sigma, sigma_z=sigma)
            )
        if params.intensity_prob > 0:
            chain.append(RandScaleIntensityd(keys="image", factors=0.25, prob=params.intensity_prob))
        if params.gamma_prob > 0:
            chain.append(RandAdjustContrastd(keys="image", prob=params.gamma_prob, gamma=(0.7, 1.5)))
    elif tuple(crop) != tuple(patch):
        chain.append(CenterSpatialCropd(keys=KEYS, roi_size=tuple(patch)))
    return Compose(chain)


def val_transforms(patch: Sequence[int], params: MonaiDatasetParams) -> Compose:
    """Sample (pos/neg) a patch, without augmentation, with its ``valid`` voxels."""
    return Compose(_sampling(patch, params.pos, params.neg, (*KEYS, VALID)))


def rotate_range(plane: Sequence[int], degrees: float, ndim: int) -> tuple[float, ...]:
    """MONAI's per-axis rotation ranges (radians) that rotate within ``plane`` only: in 3D, angle k rotates
    the plane of the two other axes, so a 2-axis plane (an anisotropic patch) gets the angle about its normal."""
    radians = math.radians(degrees)
    if ndim != 3:
        return (radians,)
    if len(plane) >= 3:
        return (radians,) * 3
    normal = 3 - sum(plane)
    return tuple(radians if axis == normal else 0.0 for axis in range(3))


def _sampling(size: Sequence[int], pos: float, neg: float, keys: Sequence[str] = KEYS) -> list[Any]:
    return [
        PadEndd(keys, size=size),
        RandCropByPosNegLabeld(
            keys=keys,
            label_key="mask",
            spatial_size=tuple(size),
            pos=pos,
            neg=neg,
            num_samples=1,
            fg_indices_key=FG,
            bg_indices_key=BG,
        ),
        OwnArraysd(keys=keys),
    ]


class PadEndd(MapTransform):
    """Pad every key at the end of each axis to at least ``size``: the image (``KEYS[0]``) with its background
    ``data[PAD]()``, the others with 0. Volumes already large enough pass through untouched (still memory maps).
    Drops ``PAD``, so later transforms never copy it."""

    def __init__(self, keys: Sequence[str], *, size: Sequence[int]):
        MapTransform.__init__(self, keys)
        self.size = tuple(int(s) for s in size)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        background = d.pop(PAD, None)
        for key in self.key_iterator(d):
            array = d[key]
            shape = tuple(max(s, p) for s, p in zip(array.shape[1:], self.size, strict=True))
            if shape != tuple(array.shape[1:]):
                value = background() if key == KEYS[0] and background is not None else 0
                d[key] = window(array, (0,) * len(shape), shape, value)
        return d


class RandPosNegWindowd(Randomizable, MapTransform):
    """Centre a patch on a foreground voxel (``pos``) or anywhere (``neg``) like ``RandCropByPosNegLabeld``,
    and return the enlarged ``window`` around it (owned arrays; outside the volume, the image holds its
    background ``data[PAD]()``, the mask 0).

    ``fg_indices``/``bg_indices`` are flat indices into the volume padded at the end to the patch size."""

    def __init__(self, keys: Sequence[str], *, patch: Sequence[int], window: Sequence[int], pos: float, neg: float):
        MapTransform.__init__(self, keys)
        self.patch = tuple(int(p) for p in patch)
        self.window = tuple(int(w) for w in window)
        self.pos_ratio = pos / (pos + neg)
        self.centre: tuple[int, ...] = ()

    def randomize(self, data: Any = None) -> None:
        shape, fg, bg = data
        self.centre = tuple(
            generate_pos_neg_label_crop_centers(self.patch, 1, self.pos_ratio, shape, fg, bg, rand_state=self.R)[0]
        )

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        fg, bg, background = d.pop(FG), d.pop(BG), d.pop(PAD, None)
        spatial = d[self.keys[0]].shape[1:]
        shape = tuple(max(s, p) for s, p in zip(spatial, self.patch, strict=True))
        self.randomize((shape, fg, bg))
        start = tuple(c - w // 2 for c, w in zip(self.centre, self.window, strict=True))
        inside = all(s >= 0 and s + w <= n for s, w, n in zip(start, self.window, spatial, strict=True))
        for key in self.key_iterator(d):
            value = background() if key == KEYS[0] and background is not None and not inside else 0
            d[key] = torch.from_numpy(window(d[key], start, self.window, value))
        return d


def window(array: Any, start: Sequence[int], size: Sequence[int], value: Any = 0) -> np.ndarray:
    """``array[:, start:start+size]`` (channels first) as an owned array, ``value`` (a scalar or one per
    channel) where it leaves the volume; only the overlapping part is read (a memory map stays mostly on disk)."""
    fill = np.asarray(value, dtype=array.dtype)
    out = np.empty((array.shape[0], *size), dtype=array.dtype)
    out[...] = fill.reshape(fill.shape + (1,) * len(size)) if fill.ndim else fill
    src, dst = [slice(None)], [slice(None)]
    for s, n, dim in zip(start, size, array.shape[1:], strict=True):
        lo, hi = max(s, 0), min(s + n, dim)
        if hi <= lo:
            return out
        src.append(slice(lo, hi))
        dst.append(slice(lo - s, hi - s))
    out[tuple(dst)] = array[tuple(src)]
    return out


class OwnArraysd(MapTransform):
    """Copy cropped views of read-only memory maps into owned tensors before anything writes to them."""

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = torch.as_tensor(d[key]).clone()
        return d

"""An image's voxel spacing as the default preprocessor resamples it: in the fingerprint's unit, with a 2D
image's missing z filled in, and refused before a calibration error resamples it past memory."""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

from biom3d.core.builtins.resample import target_shape
from biom3d.core.errors import DataError
from biom3d.core.imagedata import ImageData
from biom3d.core.units import MISLABELLED, NEAR, convert_spacing, fold, shown, spacing_near

log = logging.getLogger("biom3d")
MAX_GROWTH, MAX_RESAMPLED_VOXELS = 64, 2**28  # resampling past both is refused (1 GiB of float32 per channel)


def spacing_3d(image: ImageData, shape: Sequence[int], fingerprint: Mapping[str, Any] | None = None):
    """``image``'s spacing for its (D, H, W) ``shape``, in the fingerprint's ``spacing_unit`` when both it and
    the reader's ``meta["unit"]`` are lengths (see :func:`biom3d.core.units.spacing_near` for a unit that looks
    mislabelled): a flat image's (y, x) gets a z in front, the dataset's (its one slice stays one) or 1; None
    stays None. Another count of values, or a resampling that would multiply the voxels past memory, is refused
    naming the file."""
    if image.spacing is None:
        return None
    spacing = tuple(float(v) for v in image.spacing)
    fingerprint = fingerprint or {}
    target, unit = fingerprint.get("spacing"), fingerprint.get("spacing_unit")
    flat = len(spacing) == len(shape) - 1 and shape[0] == 1
    if unit:
        reference = (target[1:] if flat else target) if target else None
        spacing, kept = spacing_near(spacing, (image.meta or {}).get("unit"), unit, reference)
        if kept:
            say_mislabelled(str(image.path), spacing, str((image.meta or {}).get("unit")), shown(unit), "the training")
    elif target:
        spacing = _in_legacy_unit(image, spacing, target[1:] if flat else target)
    if flat:
        spacing = (float(target[0]) if target else 1.0, *spacing)
    elif len(spacing) != len(shape):
        raise DataError(f"{image.path}: its spacing {list(spacing)} has {len(spacing)} values for a "
                        f"{len(shape)}-D image of shape {list(shape)}; fix the file's calibration")
    if target:
        _check_growth(image, shape, spacing, target, shown(unit))
    return spacing


@functools.lru_cache(maxsize=1024)  # once per file, though preprocessing reads each twice
def say_mislabelled(name: str, spacing: tuple[float, ...], unit: str, target: str, beside: str) -> None:
    """The warning for spacing values kept as read because their header's unit looks wrong
    (:func:`biom3d.core.units.spacing_near`); ``beside`` names what they were judged against."""
    log.warning("%s: its spacing %s is in %s by its header, which would be orders of magnitude from %s spacing; "
                "the values look like %s under the wrong unit and are taken as %s (fix the header if they are not)",
                name, list(spacing), unit, beside, target, target)


def _in_legacy_unit(image: ImageData, spacing: tuple[float, ...], reference: Sequence[float]) -> tuple[float, ...]:
    """A run whose fingerprint names no unit (version 1) holds its images' values as their reader gave them then,
    which for MONAI's NIfTI reader were the header's own units (µm for a micron file; it gives mm now). Values
    orders of magnitude from that run's spacing are taken in the length unit that brings them near it."""
    unit = (image.meta or {}).get("unit")
    if len(reference) != len(spacing) or min((*spacing, *reference)) <= 0:
        return spacing
    if fold(spacing, reference) < MISLABELLED:
        return spacing
    for guess in ("um", "mm", "nm", "m"):
        guessed = convert_spacing(spacing, unit, guess)
        if guessed is not None and fold(guessed, reference) <= NEAR:
            _say_guessed(str(image.path), spacing, str(unit), shown(guess))
            return guessed
    return spacing


@functools.lru_cache(maxsize=1024)
def _say_guessed(path: str, spacing: tuple[float, ...], unit: str, guess: str) -> None:
    log.warning("%s: its spacing %s %s is orders of magnitude from the spacing of a run that recorded no unit; taken "
                "in %s, which brings it near (retrain or re-preprocess to record one)", path, list(spacing), unit, guess)


def _check_growth(image: ImageData, shape: Sequence[int], spacing: Sequence[float], target: Sequence[float],
                  unit: str) -> None:
    """Refuse a resampling that would make an image both far larger and too large, or thousands of times smaller:
    a calibration error, not data."""
    new = target_shape(shape, spacing, target)
    voxels, before = math.prod(new), math.prod(shape)
    if (voxels > MAX_GROWTH * before and voxels > MAX_RESAMPLED_VOXELS) or voxels * MAX_GROWTH**2 < before:
        raise DataError(f"{image.path}: resampling from its spacing {[float(f'{v:.4g}') for v in spacing]} {unit} to "
                        f"the training spacing {[float(f'{v:.4g}') for v in target]} {unit} would make it "
                        f"{' x '.join(map(str, new))} voxels ({voxels * 4 / 2**30:.3g} GiB per channel); check the "
                        "file's calibration (values and unit), or set preprocessor.params.resample: false")

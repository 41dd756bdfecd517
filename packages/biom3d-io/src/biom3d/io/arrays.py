"""How writers see an array: its axes (spatial, or channel-first) and a data type the format can store."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from biom3d.core.errors import DataError
from biom3d.core.imagedata import ImageData

_LAYOUT_AXES = set("CZYX")


def channel_first(array: np.ndarray, ref: ImageData | None, path: Path) -> tuple[np.ndarray, bool]:
    """``(array, has_channel)`` with any channel axis first: (D, H, W), (C, D, H, W), or their 2-D forms.

    Writers receive predictions in the core's layout (spatial, or channel-first). An array shaped exactly
    like ``ref`` is taken in ``ref``'s stored layout instead (``meta['axes']``, e.g. 'ZCYX' or 'ZYXC'), so that
    reading then writing an image converts it without scrambling axes.
    """
    array = np.asarray(array)
    axes = ref.meta.get("axes") if ref is not None else None
    if (
        isinstance(axes, str)
        and ref is not None
        and tuple(array.shape) == ref.shape
        and len(axes) == array.ndim
        and set(axes) <= _LAYOUT_AXES
        and axes.count("C") <= 1
    ):
        if "C" in axes:
            return np.moveaxis(array, axes.index("C"), 0), True
        return array, False
    spatial = _spatial_axes(ref, array.ndim)
    if array.ndim == spatial and spatial in (2, 3):
        return array, False
    if array.ndim == spatial + 1 and spatial in (2, 3):
        return array, True
    raise DataError(
        f"cannot write {path.name}: an array of shape {tuple(array.shape)} is neither spatial (D, H, W) nor "
        f"channel-first (C, D, H, W) for a {spatial}-D image. Reshape it before writing."
    )


def _spatial_axes(ref: ImageData | None, ndim: int) -> int:
    """How many spatial axes ``ref`` has: its spacing's, else its stored axes' (a 2-D TIFF's 'YX': a (3, H, W)
    multi-label mask of it is channel-first, not a Z stack), else up to 3."""
    if ref is not None and ref.spacing:
        return len(ref.spacing)
    axes = ref.meta.get("axes") if ref is not None and isinstance(ref.meta, dict) else None
    if isinstance(axes, str) and set(axes) <= _LAYOUT_AXES and 2 <= len(axes.replace("C", "")) <= 3:
        return len(axes.replace("C", ""))
    return min(ndim, 3)


def fit_dtype(array: np.ndarray, allowed: Sequence[str], fmt: str, path: Path) -> np.ndarray:
    """``array`` in a data type ``fmt`` stores: unchanged if allowed, else the narrowest allowed type that
    holds its values (booleans as uint8, label masks in the smallest integer type, floats in float32)."""
    dtypes = [np.dtype(d) for d in allowed]
    if array.dtype in dtypes:
        return array
    if array.dtype == np.bool_:
        return array.astype(np.uint8)
    if np.issubdtype(array.dtype, np.integer):
        lo, hi = (int(array.min()), int(array.max())) if array.size else (0, 0)
        for dtype in sorted((d for d in dtypes if np.issubdtype(d, np.integer)), key=lambda d: d.itemsize):
            info = np.iinfo(dtype)
            if info.min <= lo and hi <= info.max:
                return array.astype(dtype)
        raise DataError(
            f"cannot write {path.name}: its {array.dtype} values ({lo}..{hi}) do not fit the integer types "
            f"{fmt} stores ({', '.join(allowed)}). Write a .npy or .nii.gz file instead."
        )
    if np.issubdtype(array.dtype, np.floating) and "float32" in allowed:
        return array.astype(np.float32)
    raise DataError(
        f"cannot write {path.name}: {fmt} does not store {array.dtype} data (it stores {', '.join(allowed)}). "
        "Convert the array or write a .npy file."
    )

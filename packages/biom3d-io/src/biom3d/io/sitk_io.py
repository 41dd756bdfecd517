"""SimpleITK images to and from :class:`ImageData`: where the (x, y, z) to (z, y, x) reversal happens.

``sitk.GetArrayFromImage`` returns (z, y, x) arrays while SimpleITK's spacing and origin are (x, y, z):
they are reversed to the array's (D, H, W) order here and reversed back on writing. The direction stays
SimpleITK's row-major tuple, unchanged.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from biom3d.core.errors import DataError
from biom3d.core.imagedata import ImageData
from biom3d.core.units import mm_per_unit

# Pixel types SimpleITK writes to every format we offer (64-bit integers are narrowed: viewers handle them
# poorly and label masks never need them).
SITK_DTYPES = ("uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "float64")

_SCALAR_AXES = {2: "YX", 3: "ZYX", 4: "CZYX"}


def image_to_data(image: sitk.Image, path: Path, fmt: str, **meta: object) -> ImageData:
    """Array plus spacing/origin/direction in the array's order; ``meta['axes']`` names its axes.

    A vector-pixel image (RGB, multi-component) comes back channel-last ('ZYXC'). A 4-D scalar image (the
    NIfTI layout of multi-modal datasets) is read as channel-first 'CZYX', its spatial metadata the first three
    axes' own.
    """
    dim = image.GetDimension()
    vector = image.GetNumberOfComponentsPerPixel() > 1
    if dim not in _SCALAR_AXES or (vector and dim == 4):
        raise DataError(
            f"cannot read {path.name}: {dim}-D {'vector ' if vector else ''}images are not supported "
            "(biom3d reads 2-D/3-D images, with at most one channel axis). Split or convert the file."
        )
    axes = _SCALAR_AXES[dim] + ("C" if vector else "")
    spatial = min(dim, 3)
    return ImageData(
        array=sitk.GetArrayFromImage(image),
        spacing=tuple(float(s) for s in image.GetSpacing()[:spatial][::-1]),
        origin=tuple(float(o) for o in image.GetOrigin()[:spatial][::-1]),
        direction=tuple(float(d) for d in image.GetDirection()),
        path=path,
        meta={"format": fmt, "axes": axes, "unit": "mm", **meta},
    )


def data_to_image(array: np.ndarray, has_channel: bool, ref: ImageData | None) -> sitk.Image:
    """A SimpleITK image of a spatial or channel-first array, carrying ``ref``'s spacing, origin, direction.

    Channels are written as vector pixels, so the image keeps the 3-D geometry of ``ref``.
    """
    if has_channel:
        image = sitk.GetImageFromArray(np.ascontiguousarray(np.moveaxis(array, 0, -1)), isVector=True)
    else:
        image = sitk.GetImageFromArray(np.ascontiguousarray(array), isVector=False)
    if ref is None:
        return image
    dim = image.GetDimension()
    scale = mm_per_unit((ref.meta or {}).get("unit") if isinstance(ref.meta, dict) else None)
    if ref.spacing and len(ref.spacing) == dim:
        image.SetSpacing([float(s) * scale for s in ref.spacing[::-1]])
    if ref.origin and len(ref.origin) == dim:
        image.SetOrigin([float(o) * scale for o in ref.origin[::-1]])
    direction = _fit_direction(ref.direction, dim)
    if direction is not None:
        image.SetDirection(direction)
    return image


def _fit_direction(direction: tuple[float, ...] | None, dim: int) -> tuple[float, ...] | None:
    """``direction`` as a ``dim`` x ``dim`` matrix: itself, or the top-left block of a larger one (4-D refs)."""
    if not direction:
        return None
    n = math.isqrt(len(direction))
    if n * n != len(direction) or n < dim:
        return None
    return tuple(float(direction[r * n + c]) for r in range(dim) for c in range(dim))

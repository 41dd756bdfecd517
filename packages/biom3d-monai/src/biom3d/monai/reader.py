"""A reader on MONAI's ``LoadImage(image_only=False)``, returning biom3d's ImageData.

biom3d's arrays are NumPy/SimpleITK ordered, spatial axes ``(D, H, W) = (z, y, x)``, channels first; NIfTI
through nibabel (and PIL images) come out of MONAI in ``(x, y, z)`` order with channels last, so they are
transposed here. MONAI's affine is RAS (nibabel's convention); ImageData carries SimpleITK's LPS
origin/direction, so a NIfTI read here and by SimpleITK gives the same array, spacing, origin and direction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from monai.transforms import LoadImage

from biom3d.core.errors import DataError
from biom3d.core.imagedata import ImageData
from biom3d.core.nifti_header import META_KEY, header_forms
from biom3d.core.units import mm_per_unit

LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0])
READER_ID = "monai/load-image"


@dataclass(frozen=True)
class Format:
    """How one suffix is read: MONAI's reader, whether it reverses axes, whether it has physical metadata."""

    monai_reader: str
    reversed_axes: bool
    physical: bool


FORMATS: dict[str, Format] = {
    ".nii.gz": Format("NibabelReader", True, True),
    ".nii": Format("NibabelReader", True, True),
    ".npy": Format("NumpyReader", False, False),
    ".png": Format("PILReader", True, False),
    ".jpg": Format("PILReader", True, False),
    ".jpeg": Format("PILReader", True, False),
    ".bmp": Format("PILReader", True, False),
}
# NIfTI's xyzt_units space code -> its unit (0, unknown, is mm as ITK reads it): lengths come out in mm like
# SimpleITK's, a micron NIfTI's 0.5 as 0.0005, and ``meta["unit"]`` says so.
_NIFTI_UNITS = {1: "m", 2: "mm", 3: "um"}
SUFFIXES = tuple(FORMATS)  # what plugin.py announces (kept in sync by a test)


def build_reader(params: Any, ctx: Any) -> MonaiReader:
    return MonaiReader()


class MonaiReader:
    """``reader(path) -> ImageData``; the original dtype is kept (masks stay integer)."""

    def __init__(self) -> None:
        self._loaders: dict[str, LoadImage] = {}

    def __call__(self, path: Path) -> ImageData:
        path = Path(path)
        fmt = _format(path)
        if not path.is_file():
            raise DataError(f"cannot read {path}: no such file")
        loader = self._loaders.get(fmt.monai_reader)
        if loader is None:
            loader = self._loaders[fmt.monai_reader] = LoadImage(reader=fmt.monai_reader, image_only=False, dtype=None)
        try:
            data, meta = loader(str(path))
        except Exception as exc:  # MONAI wraps readers' errors in its own; name the file and the reader
            raise DataError(f"cannot read {path} with MONAI's {fmt.monai_reader}: {type(exc).__name__}: {exc}") from exc
        array = np.asarray(data.detach().cpu().numpy() if hasattr(data, "detach") else data)
        array = _to_biom3d_axes(array, meta.get("original_channel_dim"), fmt.reversed_axes)
        affine = np.asarray(meta.get("affine"), dtype=np.float64)
        image = ImageData(array=array, path=path, meta={"reader": READER_ID, "monai_reader": fmt.monai_reader})
        spatial = array.ndim if _channel_axis(meta.get("original_channel_dim")) is None else array.ndim - 1
        if fmt.physical and spatial == 3 and affine.shape == (4, 4):
            spacing, origin, image.direction = lps_geometry(affine, meta.get("pixdim"))
            scale = mm_per_unit(_NIFTI_UNITS.get(int(np.asarray(meta.get("xyzt_units", 0)).item()) & 0x07, "mm"))
            image.spacing = tuple(s * scale for s in spacing)
            image.origin = tuple(o * scale + 0.0 for o in origin)
            image.meta["unit"] = "mm"
            image.meta["affine_ras"] = affine.tolist()
            forms = header_forms(meta) if path.name.lower().endswith((".nii", ".nii.gz")) else None
            if forms:
                image.meta[META_KEY] = forms  # both orientations, for the writer (see biom3d.core.nifti_header)
        return image


def lps_geometry(
    affine_ras: np.ndarray, pixdim: Any = None
) -> tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]]:
    """(spacing, origin) in (D, H, W) order and the row-major LPS direction in (x, y, z) order, from a RAS
    voxel-to-world affine whose voxel axes are (x, y, z). The header's pixdim gives the spacing when it
    agrees with the affine (as ITK reads it: the float32 affine alone is off in the 7th digit)."""
    linear = affine_ras[:3, :3]
    norms = np.linalg.norm(linear, axis=0)
    direction = LPS_FROM_RAS @ (linear / norms)
    spacing_xyz = norms
    if pixdim is not None and len(pixdim) >= 4:
        header = np.abs(np.asarray(pixdim, dtype=np.float64)[1:4])
        if np.allclose(header, norms, rtol=1e-5):
            spacing_xyz = header
    origin_xyz = LPS_FROM_RAS @ affine_ras[:3, 3]
    return (
        tuple(float(s) for s in spacing_xyz[::-1]),
        tuple(float(o) + 0.0 for o in origin_xyz[::-1]),
        tuple(float(d) + 0.0 for d in direction.ravel()),
    )


def _format(path: Path) -> Format:
    name = path.name.lower()
    hits = [s for s in FORMATS if name.endswith(s)]
    if not hits:
        raise DataError(f"cannot read {path}: the MONAI reader handles {', '.join(SUFFIXES)}")
    return FORMATS[max(hits, key=len)]


def _channel_axis(value: Any) -> int | None:
    """MONAI's ``original_channel_dim``: an int, or 'no_channel'/NaN when there is none."""
    if value is None or isinstance(value, str):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else int(number)


def _to_biom3d_axes(array: np.ndarray, channel_dim: Any, reverse: bool) -> np.ndarray:
    """Channels first, spatial axes in NumPy/SimpleITK order."""
    channel = _channel_axis(channel_dim)
    if channel is not None:
        array = np.moveaxis(array, channel, 0)
    if reverse:
        first = 0 if channel is None else 1
        spatial = list(range(first, array.ndim))
        array = array.transpose(list(range(first)) + spatial[::-1])
    return np.ascontiguousarray(array)

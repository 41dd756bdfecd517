"""A NIfTI writer (nibabel, MONAI's NIfTI backend) matching :mod:`biom3d.monai.reader`.

It writes ``array`` ((D, H, W), or (C, D, H, W) as a 4D NIfTI with channels last) with the reference image's
spacing/origin/direction, so what the reader (or SimpleITK) reads back sits where the input was. The file is
serialised in memory and moved into place by core's ``atomic_path``: an interrupted run never leaves half a
file, and an existing file is refused unless ``overwrite`` is set.
"""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from biom3d.core.atomic import atomic_path
from biom3d.core.errors import InputError
from biom3d.core.imagedata import ImageData
from biom3d.core.nifti_header import META_KEY, apply_forms
from biom3d.core.units import mm_per_unit
from biom3d.monai.dataparams import SaveImageParams

RAS_FROM_LPS = np.diag([-1.0, -1.0, 1.0])


class OutputExistsError(InputError, FileExistsError):
    """The writer would replace an existing file."""


def build_writer(params: SaveImageParams, ctx: Any) -> NiftiWriter:
    return NiftiWriter(overwrite=params.overwrite, compress_level=params.compress_level)


class NiftiWriter:
    """``writer(path, array, ref)``; ``ref`` may be None (unit spacing, zero origin, identity direction)."""

    def __init__(self, *, overwrite: bool = False, compress_level: int = 6):
        self.overwrite = overwrite
        self.compress_level = compress_level

    def __call__(self, path: Path, array: Any, ref: ImageData | None) -> None:
        path = Path(path)
        name = path.name.lower()
        if not name.endswith((".nii", ".nii.gz")):
            raise InputError(f"cannot write {path}: the MONAI writer writes .nii and .nii.gz files")
        if path.exists() and not self.overwrite:
            raise OutputExistsError(
                f"{path} already exists; set the writer's overwrite param to true or choose another output folder"
            )
        data = _storable(np.asarray(array))
        if data.ndim not in (3, 4):
            raise InputError(f"cannot write {path}: expected a (D, H, W) or (C, D, H, W) array, got shape {data.shape}")
        xyz = data.transpose(2, 1, 0) if data.ndim == 3 else data.transpose(3, 2, 1, 0)
        affine = ras_affine(ref)
        image = nib.Nifti1Image(np.ascontiguousarray(xyz), affine, dtype=xyz.dtype)
        image.header.set_qform(affine, code=1)
        image.header.set_sform(affine, code=1)
        image.header.set_xyzt_units("mm")
        forms = (ref.meta or {}).get(META_KEY) if ref is not None and isinstance(ref.meta, dict) else None
        if forms and apply_forms(image.header, forms):  # the input's qform and sform, not one affine in both
            image = nib.Nifti1Image(image.dataobj, None, header=image.header)  # no affine to put back over them
        payload = image.to_bytes()
        if name.endswith(".gz"):
            payload = gzip.compress(payload, compresslevel=self.compress_level, mtime=0)
        with atomic_path(path) as tmp:
            tmp.write_bytes(payload)


def ras_affine(ref: ImageData | None) -> np.ndarray:
    """The RAS voxel-(x, y, z)-to-world affine of ``ref``'s (D, H, W) spacing/origin and LPS direction, in
    millimetres (the unit the header names): a TIFF input's micrometres are converted, as SimpleITK's writer does."""
    scale = mm_per_unit((ref.meta or {}).get("unit")) if ref is not None and isinstance(ref.meta, dict) else 1.0
    spacing = tuple(s * scale for s in _values(ref, "spacing", 3) or (1.0, 1.0, 1.0))
    origin = tuple(o * scale for o in _values(ref, "origin", 3) or (0.0, 0.0, 0.0))
    direction = _values(ref, "direction", 9) or (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    affine = np.eye(4)
    lps = np.asarray(direction, dtype=np.float64).reshape(3, 3) @ np.diag(spacing[::-1])
    affine[:3, :3] = RAS_FROM_LPS @ lps
    affine[:3, 3] = RAS_FROM_LPS @ np.asarray(origin[::-1], dtype=np.float64)
    return affine


def _values(ref: ImageData | None, field: str, size: int) -> tuple[float, ...] | None:
    value = getattr(ref, field, None) if ref is not None else None
    return tuple(float(v) for v in value) if value is not None and len(value) == size else None


def _storable(data: np.ndarray) -> np.ndarray:
    """NIfTI has no bool, and int64 upsets other tools: use the smallest integer type that holds the values."""
    if data.dtype == np.bool_:
        return data.astype(np.uint8)
    if data.dtype.kind in "iu" and data.dtype.itemsize == 8:
        low, high = (int(data.min()), int(data.max())) if data.size else (0, 0)
        for dtype in (np.uint8, np.int16, np.int32):
            info = np.iinfo(dtype)
            if info.min <= low and high <= info.max:
                return data.astype(dtype)
    if data.dtype == np.float16:
        return data.astype(np.float32)
    return data

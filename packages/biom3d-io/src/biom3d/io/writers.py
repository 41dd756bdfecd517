"""Writer factories: ``factory(params, ctx)`` returns ``write(path, array, ref)``.

A prediction is written in its input's format with the input's metadata (``ref``): spacing, origin and
direction for NIfTI/MetaImage/NRRD, spacing for ImageJ TIFF and OME-TIFF. DICOM inputs get ``.nii.gz``
predictions (named by the core's predict stage): writing a DICOM series of masks (with valid UIDs and per-slice tags) is out of scope.

Arrays are spatial (D, H, W) or channel-first (C, D, H, W), as the core's stages produce them. Every write is
atomic (a temporary file beside the target, then a rename), creates parent folders, and refuses to replace an
existing file unless ``params.overwrite``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from biom3d.core.atomic import atomic_path
from biom3d.core.errors import DataError
from biom3d.core.imagedata import ImageData
from biom3d.io import tiff_meta
from biom3d.io.arrays import channel_first, fit_dtype
from biom3d.io.plugin import SITK, CompressedWriterParams, WriterParams

Write = Callable[[Path, np.ndarray, ImageData | None], None]

IMAGEJ_DTYPES = ("uint8", "uint16", "int16", "float32")
OME_DTYPES = ("uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "float64")
# MetaImage and NRRD with a detached header (.mhd + .raw, .nhdr + .raw) are written as one file, data inline:
# a valid file of the same format, and one atomic rename instead of two files that could disagree.
_INLINE = {".mhd": ".mha", ".nhdr": ".nrrd"}


def build_npy_writer(params: WriterParams, ctx: Any = None) -> Write:
    """NumPy ``.npy``: the array exactly as given, no metadata."""

    def write(path: Path, array: np.ndarray, ref: ImageData | None = None) -> None:
        array = np.asarray(array)
        if array.dtype == object:
            raise DataError(f"cannot write {Path(path).name}: object arrays are not images. Convert it first.")
        with _atomic_target(Path(path), params.overwrite) as tmp, open(tmp, "wb") as f:
            np.save(f, array, allow_pickle=False)

    return write


def build_tiff_writer(params: WriterParams, ctx: Any = None) -> Write:
    """ImageJ hyperstack TIFF (Fiji opens it calibrated): resolution, ``spacing`` and ``unit`` from ``ref``.

    ImageJ stores uint8, uint16, int16 and float32 only: other types are narrowed to the smallest that
    holds the values (label masks) or to float32; ImageJ hyperstacks are never compressed.
    """

    def write(path: Path, array: np.ndarray, ref: ImageData | None = None) -> None:
        import tifffile

        path = Path(path)
        data, has_channel = channel_first(array, ref, path)
        data = fit_dtype(data, IMAGEJ_DTYPES, "ImageJ TIFF", path)
        axes = _spatial_letters(data.ndim - has_channel)
        if has_channel:  # ImageJ orders axes TZCYXS
            data, axes = (np.moveaxis(data, 0, 1), "ZCYX") if axes == "ZYX" else (data, "CYX")
        kwargs, metadata = tiff_meta.imagej_write_metadata(_spacing(ref, axes), _unit(ref, "micron"))
        with _atomic_target(path, params.overwrite) as tmp:
            tifffile.imwrite(
                tmp,
                data,
                imagej=True,
                ome=False,
                photometric="minisblack",
                metadata={"axes": axes, **metadata},
                **kwargs,
            )

    return write


def build_ome_tiff_writer(params: CompressedWriterParams, ctx: Any = None) -> Write:
    """OME-TIFF: spacing as OME ``PhysicalSize{X,Y,Z}``; channel-first arrays keep their channel axis."""

    def write(path: Path, array: np.ndarray, ref: ImageData | None = None) -> None:
        import tifffile

        path = Path(path)
        data, has_channel = channel_first(array, ref, path)
        data = fit_dtype(data, OME_DTYPES, "OME-TIFF", path)
        axes = ("C" if has_channel else "") + _spatial_letters(data.ndim - has_channel)
        metadata = {"axes": axes, **tiff_meta.ome_write_metadata(_spacing(ref, axes), _unit(ref, "µm"))}
        compression = "zlib" if params.compress else None
        with _atomic_target(path, params.overwrite) as tmp:
            tifffile.imwrite(tmp, data, ome=True, photometric="minisblack", metadata=metadata, compression=compression)

    return write


def build_sitk_writer(params: CompressedWriterParams, ctx: Any = None) -> Write:
    """NIfTI, MetaImage, NRRD through SimpleITK, with ``ref``'s spacing, origin and direction.

    Channel-first arrays become vector-pixel images (read back channel-last, 'ZYXC').
    """

    def write(path: Path, array: np.ndarray, ref: ImageData | None = None) -> None:
        import SimpleITK as sitk

        from biom3d.core.nifti_header import META_KEY
        from biom3d.io.nifti_forms import SUFFIXES, restore_forms
        from biom3d.io.sitk_io import SITK_DTYPES, data_to_image

        path = Path(path)
        suffix = _sitk_suffix(path)
        data, has_channel = channel_first(array, ref, path)
        image = data_to_image(fit_dtype(data, SITK_DTYPES, "SimpleITK", path), has_channel, ref)
        with _atomic_target(path, params.overwrite, suffix=_INLINE.get(suffix, suffix)) as tmp:
            sitk.WriteImage(image, str(tmp), useCompression=params.compress)
            forms = (ref.meta or {}).get(META_KEY) if ref is not None and isinstance(ref.meta, dict) else None
            if forms and suffix in SUFFIXES:
                restore_forms(tmp, forms)  # ITK wrote one orientation into both: the input's two, back

    return write


@contextlib.contextmanager
def _atomic_target(path: Path, overwrite: bool, suffix: str = "") -> Iterator[Path]:
    """A temporary path beside ``path`` that replaces it on success; ends with ``suffix`` when given.

    Core's ``atomic_path`` names its file ``...<suffix>.tmp``; SimpleITK picks its file format from the
    extension, so with a ``suffix`` the data is written to ``<that name><suffix>`` and renamed onto it.
    """
    if path.is_dir():
        raise DataError(f"cannot write {path}: it is a folder. Give a file name.")
    if path.exists() and not overwrite:
        raise DataError(f"{path} already exists: biom3d does not overwrite files. Pass --overwrite to replace it.")
    with atomic_path(path) as tmp:
        if not suffix:
            yield tmp
            return
        staged = tmp.with_name(tmp.name + suffix)
        try:
            yield staged
            os.replace(staged, tmp)
        finally:
            staged.unlink(missing_ok=True)


def _sitk_suffix(path: Path) -> str:
    hits = [s for s in SITK if path.name.lower().endswith(s)]
    if not hits:
        raise DataError(f"cannot write {path.name}: this writer writes {', '.join(SITK)} files.")
    return max(hits, key=len)


def _spatial_letters(ndim: int) -> str:
    return tiff_meta.SPATIAL[-ndim:]


def _spacing(ref: ImageData | None, axes: str) -> tuple[float, ...] | None:
    """``ref``'s spacing when it matches the spatial axes being written."""
    if ref is None or not ref.spacing or len(ref.spacing) != len(tiff_meta.spatial_axes(axes)):
        return None
    return tuple(float(s) for s in ref.spacing)


def _unit(ref: ImageData | None, micrometre: str) -> str:
    """The spacing's unit as the format spells it: µm (TIFF readers' unit) unless ``ref`` says otherwise."""
    unit = ref.meta.get("unit") if ref is not None else None
    return micrometre if unit in (None, "um", "µm") else str(unit)

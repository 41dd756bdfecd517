"""Reader factories: ``factory(params, ctx)`` returns ``read(path) -> ImageData``.

The registry picks a reader by suffix (or the DICOM reader for a folder); a reader never falls back to
another format. A file that cannot be decoded raises a :class:`DataError` naming it, the problem and the fix.
Whether the values are sound (NaN, Inf, ranges) is the preprocessing's business, not the reader's.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from biom3d.core.errors import DataError
from biom3d.core.imagedata import ImageData
from biom3d.io import tiff_meta
from biom3d.io.plugin import NpyReaderParams

Read = Callable[[Path], ImageData]


def build_npy_reader(params: NpyReaderParams, ctx: Any = None) -> Read:
    """NumPy ``.npy``: the array only (no spacing). Memory-mapped (read-only) when ``params.mmap``."""
    mmap_mode = "r" if params.mmap else None

    def read(path: Path) -> ImageData:
        path = _existing(path)
        try:
            array = np.load(path, mmap_mode=mmap_mode, allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise _undecodable(
                path, "NumPy .npy", exc, "re-save it with numpy.save (object arrays are refused)"
            ) from exc
        if not isinstance(array, np.ndarray):
            raise DataError(f"cannot read {path}: it is not a single-array .npy file. Re-save it with numpy.save.")
        return ImageData(array=array, path=path, meta={"format": "npy"})

    return read


def build_tiff_reader(params: Any = None, ctx: Any = None) -> Read:
    """TIFF with spacing from ImageJ or OME metadata (whichever tifffile read the image series from)."""
    return _read_tiff


def build_ome_tiff_reader(params: Any = None, ctx: Any = None) -> Read:
    """OME-TIFF: the TIFF reader (OME-XML is used whenever tifffile finds it, whatever the file name)."""
    return _read_tiff


def build_sitk_reader(params: Any = None, ctx: Any = None) -> Read:
    """NIfTI, MetaImage, NRRD through SimpleITK, with spacing, origin and direction."""

    def read(path: Path) -> ImageData:
        import SimpleITK as sitk

        from biom3d.core.nifti_header import META_KEY
        from biom3d.io.nifti_forms import read_forms
        from biom3d.io.sitk_io import image_to_data

        path = _existing(path)
        try:
            image = sitk.ReadImage(str(path))
        except RuntimeError as exc:
            raise _undecodable(
                path, "SimpleITK", exc, "check that the file is complete and in the format its suffix says"
            ) from exc
        forms = read_forms(path)
        return image_to_data(image, path, fmt="sitk", **({META_KEY: forms} if forms else {}))

    return read


def build_dicom_reader(params: Any = None, ctx: Any = None) -> Read:
    """A folder holding a DICOM series. With several series, the one with the most slices is read."""

    def read(path: Path) -> ImageData:
        import SimpleITK as sitk

        from biom3d.io.sitk_io import image_to_data

        folder = Path(path)
        if not folder.is_dir():
            raise DataError(f"cannot read {folder}: the DICOM reader reads folders holding one series of slices.")
        series_ids = _quietly(sitk, lambda: sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)))
        if not series_ids:
            raise DataError(
                f"cannot read {folder}: the folder holds no DICOM series. Put the .dcm slices of one series "
                "directly in it (sub-folders are not searched), or give an image file instead."
            )
        files = {sid: sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), sid) for sid in series_ids}
        series_id = max(series_ids, key=lambda sid: len(files[sid]))
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(files[series_id])
        try:
            image = reader.Execute()
        except RuntimeError as exc:
            raise _undecodable(folder, "DICOM", exc, "check that every slice of the series is complete") from exc
        return image_to_data(
            image, folder, fmt="dicom", series_id=series_id, files=len(files[series_id]), series_ids=list(series_ids)
        )

    return read


def _read_tiff(path: Path) -> ImageData:
    import tifffile

    path = _existing(path)
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            raw_axes, kind = series.axes, series.kind.lower()
            array = series.asarray()
            page = tif.pages[0]
            tags = page.tags if hasattr(page, "tags") else {}
            imagej = tif.imagej_metadata if kind == "imagej" else None
            ome = tif.ome_metadata if kind == "ome" else None
            resolution = [tags[name].value if name in tags else None for name in ("XResolution", "YResolution")]
    except MemoryError:
        raise
    except Exception as exc:  # tifffile raises many types (TiffFileError, ValueError, struct.error, ...)
        raise _undecodable(path, "TIFF", exc, "the file may be truncated or corrupt: copy or export it again") from exc
    axes, index = tiff_meta.normalise_axes(raw_axes, array.shape)
    array = array[index]
    spacing, unit = None, None
    if imagej is not None:
        axes = tiff_meta.imagej_axes(axes, imagej)
        spacing, unit = tiff_meta.imagej_spacing(axes, imagej, *resolution)
    elif ome is not None:
        spacing = tiff_meta.ome_spacing(axes, ome)
        unit = "um" if spacing else None
    meta: dict[str, Any] = {"format": "ome-tiff" if kind == "ome" else "tiff", "axes": axes, "tiff_series": kind}
    if unit:
        meta["unit"] = unit
    return ImageData(array=array, spacing=spacing, path=path, meta=meta)


def _quietly(sitk: Any, call: Callable[[], Any]) -> Any:
    """Run ``call`` without ITK's stderr warnings (e.g. 'No Series were found': our error says it better)."""
    shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        return call()
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(shown)


def _existing(path: Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"cannot read {path}: no such file. Check the path (and the data folder in the config).")
    return path


def _undecodable(path: Path, fmt: str, exc: BaseException, fix: str) -> DataError:
    detail = str(exc).strip().splitlines()
    reason = detail[-1] if detail else type(exc).__name__
    return DataError(f"cannot read {path}: {fmt} could not decode it ({reason}); {fix}.")

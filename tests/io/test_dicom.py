"""DICOM series folders: read through the directory reader, predictions written as NIfTI."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from biom3d.core.errors import DataError
from biom3d.core.scan import Item
from biom3d.core.stages.predict import output_name


def write_dicom_series(folder: Path, array: np.ndarray, spacing: tuple[float, float, float]) -> None:
    """One .dcm file per slice with the tags a series reader needs (after SimpleITK's DicomSeriesFromArray)."""
    folder.mkdir(parents=True)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    day, now = time.strftime("%Y%m%d"), time.strftime("%H%M%S")
    d = image.GetDirection()
    series_tags = [
        ("0008|0031", now),
        ("0008|0021", day),
        ("0008|0008", "DERIVED\\SECONDARY"),
        ("0020|000e", f"1.2.826.0.1.3680043.2.1125.{day}.1{now}"),
        ("0020|0037", "\\".join(map(str, (d[0], d[3], d[6], d[1], d[4], d[7])))),
        ("0008|103e", "biom3d test series"),
        ("0008|0060", "CT"),
    ]
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for i in range(image.GetDepth()):
        plane = image[:, :, i]
        for tag, value in series_tags:
            plane.SetMetaData(tag, value)
        plane.SetMetaData("0008|0012", day)
        plane.SetMetaData("0008|0013", now)
        plane.SetMetaData("0020|0032", "\\".join(map(str, image.TransformIndexToPhysicalPoint((0, 0, i)))))
        plane.SetMetaData("0020|0013", str(i + 1))
        plane.SetMetaData("0018|0050", str(spacing[2]))
        writer.SetFileName(str(folder / f"slice{i:03d}.dcm"))
        writer.Execute(plane)


@pytest.fixture
def series(tmp_path) -> tuple[Path, np.ndarray]:
    array = np.arange(4 * 6 * 5, dtype=np.int16).reshape(4, 6, 5) - 50
    folder = tmp_path / "patient-1"
    write_dicom_series(folder, array, spacing=(0.7, 0.8, 2.5))
    return folder, array


def test_dicom_series_is_read_from_its_folder(io, series):
    folder, array = series
    assert io.registry.reader_for(folder).qid == "io/dicom"
    image = io.read(folder)
    np.testing.assert_array_equal(image.array, array)
    assert image.spacing == pytest.approx((2.5, 0.8, 0.7))
    assert image.meta["axes"] == "ZYX" and image.meta["files"] == 4 and image.path == folder


def test_dicom_prediction_is_written_as_nifti_with_the_series_geometry(io, series, tmp_path):
    folder, array = series
    ref = io.read(folder)
    out = tmp_path / "preds" / output_name(Item(folder.name, folder, "io/dicom"))  # what predict names it
    assert out.name == "patient-1.nii.gz"
    io.write(out, (array > 0).astype(np.uint8), ref)
    pred = sitk.ReadImage(str(out))
    assert pred.GetSpacing() == pytest.approx((0.7, 0.8, 2.5))
    assert pred.GetOrigin() == pytest.approx(ref.origin[::-1])


def test_folder_without_series_is_a_data_error_naming_it(io, tmp_path):
    empty = tmp_path / "not-dicom"
    empty.mkdir()
    (empty / "notes.txt").write_text("hello", encoding="utf-8")
    with pytest.raises(DataError, match=r"not-dicom.*no DICOM series"):
        io.read(empty)

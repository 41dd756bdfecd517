"""Round trips through the io readers and writers, metadata kept, and the writers' safety rules."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import tifffile

from biom3d.core.errors import DataError, RunError
from biom3d.core.imagedata import ImageData

ALL_SUFFIXES = [".npy", ".tif", ".tiff", ".ome.tif", ".ome.tiff", ".nii", ".nii.gz", ".mha", ".mhd", ".nrrd", ".nhdr"]
SITK_SUFFIXES = [".nii", ".nii.gz", ".mha", ".mhd", ".nrrd", ".nhdr"]
# (D, H, W) order; the direction is a rotation about z, in SimpleITK's (x, y, z) row-major order
SPACING = (2.0, 0.5, 0.75)
ORIGIN = (-3.0, 10.5, 4.25)
DIRECTION = (0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0)


def volume(dtype: str, shape=(4, 5, 6)) -> np.ndarray:
    rng = np.random.default_rng(0)
    if np.issubdtype(np.dtype(dtype), np.floating):
        return rng.normal(size=shape).astype(dtype)
    return rng.integers(0, np.iinfo(dtype).max, size=shape, endpoint=True).astype(dtype)


def geometry_ref(path=None) -> ImageData:
    return ImageData(array=None, spacing=SPACING, origin=ORIGIN, direction=DIRECTION, path=path)


@pytest.mark.parametrize("suffix", ALL_SUFFIXES)
@pytest.mark.parametrize("dtype", ["uint8", "uint16", "float32"])
def test_round_trip_keeps_values_and_dtype(io, tmp_path, suffix, dtype):
    array = volume(dtype)
    path = tmp_path / f"img{suffix}"
    io.write(path, array)
    back = io.read(path)
    assert back.array.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(back.array, array)
    assert back.path == path


@pytest.mark.parametrize("suffix", SITK_SUFFIXES)
def test_sitk_round_trip_keeps_spacing_origin_direction(io, tmp_path, suffix):
    path = tmp_path / f"img{suffix}"
    io.write(path, volume("uint16"), geometry_ref())
    back = io.read(path)
    assert back.spacing == pytest.approx(SPACING)
    assert back.origin == pytest.approx(ORIGIN)
    assert back.direction == pytest.approx(DIRECTION)
    assert back.meta["axes"] == "ZYX"
    image = sitk.ReadImage(str(path))  # and SimpleITK itself sees them in its (x, y, z) order
    assert image.GetSpacing() == pytest.approx(SPACING[::-1])
    assert image.GetOrigin() == pytest.approx(ORIGIN[::-1])


def test_prediction_for_a_nifti_input_carries_its_geometry(io, tmp_path):
    image = sitk.GetImageFromArray(volume("float32", (5, 6, 7)))
    image.SetSpacing((0.8, 0.9, 3.0))
    image.SetOrigin((1.0, 2.0, 3.0))
    image.SetDirection((1.0, 0.0, 0.0, 0.0, 0.0, -1.0, 0.0, 1.0, 0.0))
    sitk.WriteImage(image, str(tmp_path / "case.nii.gz"))

    ref = io.read(tmp_path / "case.nii.gz")
    assert ref.array.shape == (5, 6, 7) and ref.spacing == pytest.approx((3.0, 0.9, 0.8))
    mask = (ref.array > 0).astype(np.int64)  # what an argmax gives: narrowed on writing
    out = tmp_path / "preds" / ref.path.name
    io.write(out, mask, ref)

    pred = sitk.ReadImage(str(out))
    assert pred.GetSpacing() == pytest.approx(image.GetSpacing())
    assert pred.GetOrigin() == pytest.approx(image.GetOrigin())
    assert pred.GetDirection() == pytest.approx(image.GetDirection())
    assert pred.GetPixelIDValue() == sitk.sitkUInt8
    np.testing.assert_array_equal(sitk.GetArrayFromImage(pred), mask)


REGISTERED = np.array([[0.0, -0.9, 0.0, 40.0], [0.8, 0.0, 0.0, -12.5], [0.0, 0.0, 3.0, 7.0], [0, 0, 0, 1]])
LEFT_HANDED = np.array([[-0.8, 0.0, 0.0, 5.0], [0.0, 0.9, 0.0, 2.0], [0.0, 0.0, 3.0, 3.0], [0, 0, 0, 1]])


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
@pytest.mark.parametrize(("qform", "sform", "sform_code", "unit"), [
    (np.diag([0.8, 0.9, 3.0, 1.0]), REGISTERED, 4, "mm"),  # a scan registered to MNI
    (LEFT_HANDED, REGISTERED, 2, "mm"),  # a radiological (left-handed) qform: its handedness is kept too
    (LEFT_HANDED, None, 0, "mm"),  # the qform alone
    (np.diag([0.8, 0.9, 3.0, 1.0]), REGISTERED * [[1000], [1000], [1000], [1]], 2, "micron"),  # fields in µm
], ids=["registered", "left-handed", "qform-only", "micron"])
def test_a_nifti_prediction_keeps_its_inputs_qform_and_sform(io, tmp_path, suffix, qform, sform, sform_code, unit):
    """ITK reads one of a NIfTI's two orientations and would write it into both; the prediction must carry both,
    as the input has them, since viewers reading either one place it."""
    import nibabel as nib

    if unit == "micron":
        qform = qform * [[1000], [1000], [1000], [1]]
    scan = nib.Nifti1Image(volume("float32", (7, 6, 5)), None)
    scan.set_qform(qform, code=1)  # scanner
    scan.set_sform(sform if sform is not None else qform, code=sform_code)
    scan.header.set_xyzt_units(xyz=unit)
    nib.save(scan, tmp_path / f"case{suffix}")

    ref = io.read(tmp_path / f"case{suffix}")
    mask = (ref.array > 0).astype(np.uint8)
    out = tmp_path / "preds" / ref.path.name
    io.write(out, mask, ref)

    pred, scan = nib.load(out), nib.load(tmp_path / f"case{suffix}")
    assert (int(pred.header["qform_code"]), int(pred.header["sform_code"])) == (1, sform_code)
    np.testing.assert_allclose(pred.get_qform(), scan.get_qform(), atol=1e-3)
    np.testing.assert_allclose(pred.header.get_sform(), scan.header.get_sform(), atol=1e-3)
    np.testing.assert_allclose(pred.affine, scan.affine, atol=1e-3)  # what nibabel-based viewers place it by
    again, image = sitk.ReadImage(str(out)), sitk.ReadImage(str(tmp_path / f"case{suffix}"))
    assert again.GetOrigin() == pytest.approx(image.GetOrigin())  # and ITK finds the input's geometry
    assert again.GetSpacing() == pytest.approx(image.GetSpacing())
    assert again.GetDirection() == pytest.approx(image.GetDirection(), abs=1e-6)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(again), mask)  # the header alone was changed
    assert not [p.name for p in out.parent.iterdir() if p.name != out.name]  # no temporary left


def test_vector_image_is_read_channel_last(io, tmp_path):
    rgb = volume("uint8", (3, 4, 5, 3))
    sitk.WriteImage(sitk.GetImageFromArray(rgb, isVector=True), str(tmp_path / "rgb.mha"))
    back = io.read(tmp_path / "rgb.mha")
    assert back.meta["axes"] == "ZYXC" and back.array.shape == (3, 4, 5, 3)
    assert len(back.spacing) == 3


def test_four_d_nifti_is_read_channel_first(io, tmp_path):
    channels = [sitk.GetImageFromArray(volume("float32", (3, 4, 5))) for _ in range(2)]
    joined = sitk.JoinSeries(channels)
    joined.SetSpacing((0.5, 0.6, 2.0, 1.0))
    sitk.WriteImage(joined, str(tmp_path / "multi.nii.gz"))
    back = io.read(tmp_path / "multi.nii.gz")
    assert back.meta["axes"] == "CZYX" and back.array.shape == (2, 3, 4, 5)
    assert back.spacing == pytest.approx((2.0, 0.6, 0.5))
    # a 3-D prediction for it gets the 3-D part of its geometry
    io.write(tmp_path / "pred.nii.gz", np.zeros((3, 4, 5), np.uint8), back)
    assert sitk.ReadImage(str(tmp_path / "pred.nii.gz")).GetSpacing() == pytest.approx((0.5, 0.6, 2.0))


@pytest.mark.parametrize(
    ("suffix", "axes", "shape"),
    [(".nii.gz", "ZYXC", (4, 5, 6, 2)), (".tif", "ZCYX", (4, 2, 5, 6)), (".ome.tif", "CZYX", (2, 4, 5, 6))],
)
def test_channel_first_prediction_keeps_its_channels(io, tmp_path, suffix, axes, shape):
    probs = volume("float32", (2, 4, 5, 6))
    path = tmp_path / f"probs{suffix}"
    io.write(path, probs, geometry_ref())
    back = io.read(path)
    assert back.meta["axes"] == axes and back.array.shape == shape
    np.testing.assert_array_equal(np.moveaxis(back.array, axes.index("C"), 0), probs)
    assert back.spacing == pytest.approx(SPACING)


def test_rewriting_an_image_keeps_its_stored_layout(io, tmp_path):
    zcyx = volume("uint16", (3, 2, 5, 6))
    tifffile.imwrite(tmp_path / "in.tif", zcyx, imagej=True, metadata={"axes": "ZCYX"})
    image = io.read(tmp_path / "in.tif")
    io.write(tmp_path / "out.ome.tif", image.array, image)
    back = io.read(tmp_path / "out.ome.tif")
    assert back.meta["axes"] == "CZYX"
    np.testing.assert_array_equal(back.array, np.moveaxis(zcyx, 1, 0))


@pytest.mark.parametrize("suffix", [".tif", ".ome.tif"])
def test_tiff_round_trip_keeps_spacing(io, tmp_path, suffix):
    path = tmp_path / f"mask{suffix}"
    io.write(path, volume("uint8"), geometry_ref())
    back = io.read(path)
    assert back.spacing == pytest.approx(SPACING)
    assert back.meta["axes"] == "ZYX" and back.meta["unit"] == "um"


def test_imagej_output_is_calibrated_for_fiji(io, tmp_path):
    io.write(tmp_path / "mask.tif", volume("uint8"), geometry_ref())
    with tifffile.TiffFile(tmp_path / "mask.tif") as tif:
        assert tif.is_imagej and tif.imagej_metadata["spacing"] == pytest.approx(2.0)
        assert tif.imagej_metadata["slices"] == 4 and tif.imagej_metadata["unit"] == "micron"
        assert tif.pages[0].resolution == pytest.approx((1 / 0.75, 1 / 0.5))


def test_spacing_in_millimetres_is_labelled_not_rescaled(io, tmp_path):
    ref = ImageData(array=None, spacing=(2.0, 0.5, 0.5), meta={"unit": "mm"})  # as from a NIfTI or DICOM input
    io.write(tmp_path / "mask.tif", volume("uint8"), ref)
    assert io.read(tmp_path / "mask.tif").spacing == pytest.approx((2000.0, 500.0, 500.0))


def test_spacing_in_micrometres_becomes_millimetres_in_nifti(io, tmp_path):
    ref = ImageData(array=None, spacing=(2.0, 0.2, 0.2), origin=(10.0, 0.0, 0.0), meta={"unit": "um"})  # a TIFF's
    io.write(tmp_path / "mask.nii.gz", volume("uint8"), ref)
    back = io.read(tmp_path / "mask.nii.gz")
    assert back.spacing == pytest.approx((0.002, 0.0002, 0.0002)) and back.origin == pytest.approx((0.01, 0.0, 0.0))
    io.write(tmp_path / "pixels.nii.gz", volume("uint8"), ImageData(array=None, spacing=(2.0, 1.0, 1.0),
                                                                      meta={"unit": "pixel"}))
    assert io.read(tmp_path / "pixels.nii.gz").spacing == pytest.approx((2.0, 1.0, 1.0))  # no length: as it is


def test_a_multilabel_mask_of_an_uncalibrated_2d_image_is_written_channel_first(io, tmp_path):
    ref = ImageData(array=np.zeros((8, 10), np.float32), spacing=None, meta={"axes": "YX"})  # a plain 2-D TIFF
    labels = np.zeros((3, 8, 10), np.uint8)
    labels[1, 2:4, 2:4] = 1
    io.write(tmp_path / "mask.tif", labels, ref)
    back = io.read(tmp_path / "mask.tif")
    assert back.meta["axes"] == "CYX" and back.array.shape == (3, 8, 10)


def test_labels_are_narrowed_to_a_type_the_format_stores(io, tmp_path):
    labels = np.arange(4 * 5 * 6, dtype=np.int64).reshape(4, 5, 6) % 7
    io.write(tmp_path / "lab.tif", labels)
    io.write(tmp_path / "lab.ome.tif", labels.astype(bool))
    assert io.read(tmp_path / "lab.tif").array.dtype == np.uint8
    assert io.read(tmp_path / "lab.ome.tif").array.dtype == np.uint8
    with pytest.raises(DataError, match=r"big\.tif.*\.nii\.gz"):
        io.write(tmp_path / "big.tif", labels * 100_000)


def test_npy_reader_can_memory_map(io, tmp_path):
    array = volume("float32")
    io.write(tmp_path / "a.npy", array)
    mapped = io.read(tmp_path / "a.npy", mmap=True).array
    assert isinstance(mapped, np.memmap) and not mapped.flags.writeable
    np.testing.assert_array_equal(mapped, array)


def test_writer_refuses_to_overwrite(io, tmp_path):
    path = tmp_path / "pred.nii.gz"
    io.write(path, volume("uint8"))
    before = path.read_bytes()
    with pytest.raises(DataError, match=r"pred\.nii\.gz.*--overwrite"):
        io.write(path, np.zeros((4, 5, 6), np.uint8))
    assert path.read_bytes() == before
    io.write(path, np.zeros((4, 5, 6), np.uint8), overwrite=True)
    assert not io.read(path).array.any()


def test_writer_creates_parent_folders(io, tmp_path):
    path = tmp_path / "a" / "b" / "pred.tif"
    io.write(path, volume("uint8"))
    assert path.is_file()


def test_failed_write_leaves_no_temporary_file(io, tmp_path, monkeypatch):
    path = tmp_path / "pred.tif"
    io.write(path, volume("uint8"))
    before = path.read_bytes()

    def broken_imwrite(file, *args, **kwargs):
        with open(file, "wb") as f:
            f.write(b"II*\0 half a file")
        raise OSError("disk full")

    monkeypatch.setattr(tifffile, "imwrite", broken_imwrite)
    with pytest.raises(RunError, match=r"cannot write .*pred.tif: disk full"):  # one paragraph, not a traceback
        io.write(path, np.zeros((4, 5, 6), np.uint8), overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pred.tif"]
    assert path.read_bytes() == before


def test_failed_sitk_write_leaves_no_temporary_file(io, tmp_path, monkeypatch):
    def broken_write(image, filename, *args, **kwargs):
        Path(filename).write_bytes(b"\x1f\x8b half a file")
        raise RuntimeError("disk full")

    monkeypatch.setattr(sitk, "WriteImage", broken_write)
    with pytest.raises(RuntimeError, match="disk full"):
        io.write(tmp_path / "pred.nii.gz", volume("uint8"))
    assert list(tmp_path.iterdir()) == []


def test_detached_header_formats_are_written_as_one_file(io, tmp_path):
    io.write(tmp_path / "pred.mhd", volume("uint8"), geometry_ref())
    io.write(tmp_path / "pred.nhdr", volume("uint8"), geometry_ref())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pred.mhd", "pred.nhdr"]


def test_unwritable_shapes_are_a_data_error(io, tmp_path):
    with pytest.raises(DataError, match=r"x\.nii\.gz.*shape \(2, 2, 3, 4, 5\)"):
        io.write(tmp_path / "x.nii.gz", np.zeros((2, 2, 3, 4, 5), np.uint8))


def test_a_folder_of_detached_headers_scans_as_one_image_each_and_a_stray_data_file_is_named(io, tmp_path):
    """MetaImage .mhd + .raw and NRRD .nhdr + data, as ITK, 3D Slicer and Fiji write them: the data files belong
    to their header; one that no header names is still an unknown file."""
    from biom3d.core.scan import scan_folder

    folder = tmp_path / "images"
    folder.mkdir()
    arrays = {"case0": volume("uint16"), "case1": volume("float32"), "case 2": volume("uint8")}
    sitk.WriteImage(sitk.GetImageFromArray(arrays["case0"]), str(folder / "case0.mhd"))
    sitk.WriteImage(sitk.GetImageFromArray(arrays["case1"]), str(folder / "case1.nhdr"))
    sitk.WriteImage(sitk.GetImageFromArray(arrays["case 2"]), str(folder / "case 2.mhd"))  # ElementDataFile = case 2.raw
    assert len(list(folder.iterdir())) == 6  # the data files are beside their headers
    items = scan_folder(folder, io.registry)
    assert [(i.key, i.path.name) for i in items] == [("case 2", "case 2.mhd"), ("case0", "case0.mhd"),
                                                     ("case1", "case1.nhdr")]
    for item in items:
        np.testing.assert_array_equal(io.read(item.path).array, arrays[item.key])
    (folder / "stray.raw").write_bytes(b"\0" * 8)
    with pytest.raises(DataError, match="1 problem") as info:
        scan_folder(folder, io.registry)
    assert "stray.raw: no reader" in str(info.value) and "case0.raw" not in str(info.value)

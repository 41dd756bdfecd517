"""The MONAI reader agrees with SimpleITK on NIfTI; the writer round-trips geometry, atomically, without overwriting."""

import math

import numpy as np
import pytest
import SimpleITK as sitk

from biom3d.core.context import RunContext
from biom3d.core.errors import DataError, InputError
from biom3d.core.imagedata import ImageData

SPACING_XYZ = (0.5, 0.7, 2.0)
ORIGIN_XYZ = (10.0, -3.0, 4.0)
ANGLE = 0.3
DIRECTION = (math.cos(ANGLE), -math.sin(ANGLE), 0.0, math.sin(ANGLE), math.cos(ANGLE), 0.0, 0.0, 0.0, 1.0)


@pytest.fixture
def reader(registry):
    return registry.resolve("reader", "load-image").build({}, RunContext())


def _writer(registry, **params):
    return registry.resolve("writer", "save-image").build(params, RunContext())


def _sitk_nifti(path, array):
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(SPACING_XYZ)
    image.SetOrigin(ORIGIN_XYZ)
    image.SetDirection(DIRECTION)
    sitk.WriteImage(image, str(path))
    return sitk.ReadImage(str(path))


def test_nifti_reads_like_simpleitk(reader, tmp_path):
    array = np.random.default_rng(0).integers(0, 1000, (4, 5, 6)).astype(np.int16)  # (z, y, x)
    ref = _sitk_nifti(tmp_path / "scan.nii.gz", array)
    image = reader(tmp_path / "scan.nii.gz")
    assert isinstance(image, ImageData) and image.array.dtype == np.int16
    np.testing.assert_array_equal(image.array, sitk.GetArrayFromImage(ref))
    np.testing.assert_allclose(image.spacing, ref.GetSpacing()[::-1], rtol=1e-6)  # (D, H, W) order
    np.testing.assert_allclose(image.origin, ref.GetOrigin()[::-1], atol=1e-5)
    np.testing.assert_allclose(image.direction, ref.GetDirection(), atol=1e-6)  # SimpleITK's (x, y, z) matrix
    assert image.meta["reader"] == "monai/load-image" and image.path == tmp_path / "scan.nii.gz"


def test_npy_and_png_keep_numpy_order(reader, tmp_path):
    array = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    np.save(tmp_path / "a.npy", array)
    image = reader(tmp_path / "a.npy")
    np.testing.assert_array_equal(image.array, array)
    assert image.spacing is None
    from PIL import Image

    rows = (np.arange(35).reshape(5, 7) * 7).astype(np.uint8)
    Image.fromarray(rows).save(tmp_path / "a.png")
    np.testing.assert_array_equal(reader(tmp_path / "a.png").array, rows)
    with pytest.raises(DataError, match="no such file"):
        reader(tmp_path / "missing.nii.gz")
    with pytest.raises(DataError, match="handles"):
        reader(tmp_path / "a.tif")


def test_writer_round_trip_keeps_geometry(registry, reader, tmp_path):
    source = _sitk_nifti(tmp_path / "in.nii.gz", np.zeros((4, 5, 6), np.float32))
    ref = reader(tmp_path / "in.nii.gz")
    labels = np.random.default_rng(1).integers(0, 3, (4, 5, 6)).astype(np.int64)
    _writer(registry)(tmp_path / "out" / "pred.nii.gz", labels, ref)
    back = sitk.ReadImage(str(tmp_path / "out" / "pred.nii.gz"))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), labels)
    assert sitk.GetArrayFromImage(back).dtype == np.uint8  # smallest integer type that holds the labels
    np.testing.assert_allclose(back.GetSpacing(), source.GetSpacing(), rtol=1e-6)
    np.testing.assert_allclose(back.GetOrigin(), source.GetOrigin(), atol=1e-5)
    np.testing.assert_allclose(back.GetDirection(), source.GetDirection(), atol=1e-6)
    again = reader(tmp_path / "out" / "pred.nii.gz")
    np.testing.assert_array_equal(again.array, labels)
    np.testing.assert_allclose(again.spacing, ref.spacing, rtol=1e-6)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["pred.nii.gz"]  # no temporary file left


def test_writer_channels_and_defaults(registry, reader, tmp_path):
    probs = np.random.default_rng(2).random((2, 3, 4, 5)).astype(np.float32)
    _writer(registry)(tmp_path / "p.nii", probs, None)
    back = reader(tmp_path / "p.nii")
    np.testing.assert_allclose(back.array, probs)
    assert back.spacing == pytest.approx((1.0, 1.0, 1.0)) and back.origin == pytest.approx((0.0, 0.0, 0.0))
    image = sitk.ReadImage(str(tmp_path / "p.nii"))
    assert image.GetDirection()[:3] == pytest.approx((1.0, 0.0, 0.0))


def test_writer_refuses_to_overwrite_unless_asked(registry, tmp_path):
    target = tmp_path / "pred.nii.gz"
    _writer(registry)(target, np.zeros((2, 2, 2), np.uint8), None)
    before = target.read_bytes()
    with pytest.raises(InputError, match="overwrite"):
        _writer(registry)(target, np.ones((2, 2, 2), np.uint8), None)
    assert target.read_bytes() == before
    _writer(registry, overwrite=True)(target, np.ones((2, 2, 2), np.uint8), None)
    assert sitk.GetArrayFromImage(sitk.ReadImage(str(target))).sum() == 8
    with pytest.raises(InputError):
        _writer(registry)(tmp_path / "pred.tif", np.zeros((2, 2, 2)), None)


def test_a_micron_nifti_reads_in_millimetres_like_simpleitk_and_a_micron_ref_writes_millimetres(registry, reader,
                                                                                                  tmp_path):
    import nibabel as nib

    affine = np.diag([0.5, 0.7, 2.0, 1.0])
    affine[:3, 3] = (10.0, 20.0, 30.0)
    img = nib.Nifti1Image(np.zeros((6, 5, 4), np.float32), affine)
    img.header.set_xyzt_units("micron")
    nib.save(img, tmp_path / "um.nii.gz")
    image, ref = reader(tmp_path / "um.nii.gz"), sitk.ReadImage(str(tmp_path / "um.nii.gz"))
    assert image.meta["unit"] == "mm"
    np.testing.assert_allclose(image.spacing, ref.GetSpacing()[::-1], rtol=1e-6)  # 0.002, 0.0007, 0.0005
    np.testing.assert_allclose(image.origin, ref.GetOrigin()[::-1], atol=1e-9)
    tiff_like = ImageData(array=None, spacing=(2.0, 0.7, 0.5), origin=(0.0, 0.0, 0.0), meta={"unit": "um"})
    _writer(registry)(tmp_path / "pred.nii.gz", np.zeros((4, 5, 6), np.uint8), tiff_like)
    np.testing.assert_allclose(sitk.ReadImage(str(tmp_path / "pred.nii.gz")).GetSpacing(), (0.0005, 0.0007, 0.002),
                               rtol=1e-5)


REGISTERED = np.array([[0.0, -0.9, 0.0, 40.0], [0.8, 0.0, 0.0, -12.5], [0.0, 0.0, 3.0, 7.0], [0, 0, 0, 1]])
LEFT_HANDED = np.array([[-0.8, 0.0, 0.0, 5.0], [0.0, 0.9, 0.0, 2.0], [0.0, 0.0, 3.0, 3.0], [0, 0, 0, 1]])


@pytest.mark.parametrize(("qform", "sform", "unit"), [(np.diag([0.8, 0.9, 3.0, 1.0]), REGISTERED, "mm"),
                                                      (LEFT_HANDED, REGISTERED * [[1000], [1000], [1000], [1]], "micron")],
                         ids=["registered", "left-handed-micron"])
def test_writer_keeps_the_inputs_qform_and_sform(registry, reader, tmp_path, qform, sform, unit):
    """nibabel reads the sform as the geometry and the writer wrote it into both; both are the input's again."""
    import nibabel as nib

    if unit == "micron":
        qform = qform * [[1000], [1000], [1000], [1]]
    scan = nib.Nifti1Image(np.zeros((7, 6, 5), np.float32), None)
    scan.set_qform(qform, code=1)
    scan.set_sform(sform, code=4)
    scan.header.set_xyzt_units(xyz=unit)
    nib.save(scan, tmp_path / "in.nii.gz")
    ref = reader(tmp_path / "in.nii.gz")
    labels = np.random.default_rng(1).integers(0, 2, ref.array.shape).astype(np.uint8)
    _writer(registry)(tmp_path / "out" / "pred.nii.gz", labels, ref)

    pred, scan = nib.load(tmp_path / "out" / "pred.nii.gz"), nib.load(tmp_path / "in.nii.gz")
    assert (int(pred.header["qform_code"]), int(pred.header["sform_code"])) == (1, 4)
    np.testing.assert_allclose(pred.get_qform(), scan.get_qform(), atol=1e-3)
    np.testing.assert_allclose(pred.header.get_sform(), scan.header.get_sform(), atol=1e-3)
    again = reader(tmp_path / "out" / "pred.nii.gz")
    np.testing.assert_array_equal(again.array, labels)
    np.testing.assert_allclose(again.spacing, ref.spacing, rtol=1e-6)
    np.testing.assert_allclose(again.origin, ref.origin, atol=1e-4)
    back, image = sitk.ReadImage(str(tmp_path / "out" / "pred.nii.gz")), sitk.ReadImage(str(tmp_path / "in.nii.gz"))
    np.testing.assert_allclose(back.GetOrigin(), image.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(back.GetDirection(), image.GetDirection(), atol=1e-6)

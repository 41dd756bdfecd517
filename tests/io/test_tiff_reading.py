"""TIFF metadata as files carry it: ImageJ and OME spacing, axes, and undecodable files."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from biom3d.core.errors import DataError
from biom3d.io import tiff_meta


def test_imagej_spacing_from_resolution_and_spacing(io, tmp_path):
    # tifffile writes this 3-D array as 'CYX' (channels=4) but with a Z spacing: read as a z-stack
    tifffile.imwrite(
        tmp_path / "a.tif",
        np.zeros((4, 8, 8), np.uint16),
        imagej=True,
        resolution=(1 / 0.5, 1 / 0.5),
        metadata={"spacing": 2.0, "unit": "um"},
    )
    image = io.read(tmp_path / "a.tif")
    assert image.spacing == pytest.approx((2.0, 0.5, 0.5))
    assert image.meta["axes"] == "ZYX" and image.meta["unit"] == "um"


@pytest.mark.parametrize(("unit", "factor"), [("nm", 1e-3), ("micron", 1.0), ("\\u00B5m", 1.0), ("mm", 1e3)])
def test_imagej_units_are_converted_to_micrometres(io, tmp_path, unit, factor):
    tifffile.imwrite(
        tmp_path / "a.tif",
        np.zeros((3, 8, 8), np.uint8),
        imagej=True,
        resolution=(1 / 0.25, 1 / 0.5),
        metadata={"axes": "ZYX", "spacing": 4.0, "unit": unit},
    )
    assert io.read(tmp_path / "a.tif").spacing == pytest.approx((4.0 * factor, 0.5 * factor, 0.25 * factor))


def test_uncalibrated_imagej_file_has_no_spacing(io, tmp_path):
    tifffile.imwrite(tmp_path / "a.tif", np.zeros((3, 8, 8), np.uint8), imagej=True, metadata={"axes": "ZYX"})
    image = io.read(tmp_path / "a.tif")
    assert image.spacing is None and image.meta["axes"] == "ZYX"


def test_ome_spacing_from_physical_size(io, tmp_path):
    tifffile.imwrite(
        tmp_path / "a.ome.tif",
        np.zeros((2, 3, 8, 8), np.uint16),
        ome=True,
        metadata={
            "axes": "CZYX",
            "PhysicalSizeX": 0.2,
            "PhysicalSizeY": 0.3,
            "PhysicalSizeZ": 1500,
            "PhysicalSizeZUnit": "nm",
        },
    )
    image = io.read(tmp_path / "a.ome.tif")
    assert image.meta["axes"] == "CZYX" and image.meta["format"] == "ome-tiff"
    assert image.spacing == pytest.approx((1.5, 0.3, 0.2))


def test_an_ome_calibration_without_z_keeps_x_and_y(io, tmp_path):
    """A microscope's XY calibration alone: Z counts 1 µm (as ImageJ's metadata), X and Y are kept (all were
    lost: no resampling, masks written uncalibrated)."""
    tifffile.imwrite(tmp_path / "xy.ome.tif", np.zeros((4, 8, 8), np.uint16), ome=True,
                     metadata={"axes": "ZYX", "PhysicalSizeX": 0.2, "PhysicalSizeY": 0.2})
    assert io.read(tmp_path / "xy.ome.tif").spacing == pytest.approx((1.0, 0.2, 0.2))
    tifffile.imwrite(tmp_path / "none.ome.tif", np.zeros((4, 8, 8), np.uint16), ome=True, metadata={"axes": "ZYX"})
    assert io.read(tmp_path / "none.ome.tif").spacing is None


def test_ome_metadata_is_read_from_a_plain_tif_name(io, tmp_path):
    tifffile.imwrite(
        tmp_path / "a.tif",
        np.zeros((3, 8, 8), np.uint8),
        ome=True,
        metadata={"axes": "ZYX", "PhysicalSizeZ": 2.0, "PhysicalSizeY": 1.0, "PhysicalSizeX": 1.0},
    )
    assert io.read(tmp_path / "a.tif").spacing == pytest.approx((2.0, 1.0, 1.0))


@pytest.mark.parametrize(
    ("kwargs", "axes"),
    [
        ({"metadata": {"axes": "CZYX"}, "photometric": "minisblack"}, "CZYX"),
        ({"metadata": {"axes": "ZCYX"}, "imagej": True}, "ZCYX"),
        ({"metadata": {"axes": "CZYX"}, "ome": True}, "CZYX"),
    ],
)
def test_czyx_tiff_keeps_its_axes(io, tmp_path, kwargs, axes):
    shape = (3, 2, 8, 8) if axes == "ZCYX" else (2, 3, 8, 8)
    data = np.arange(np.prod(shape), dtype=np.uint16).reshape(shape)
    tifffile.imwrite(tmp_path / "a.tif", data, **kwargs)
    image = io.read(tmp_path / "a.tif")
    assert image.meta["axes"] == axes
    np.testing.assert_array_equal(image.array, data)


def test_singleton_time_is_squeezed(io, tmp_path):
    data = np.zeros((1, 3, 2, 8, 8), np.uint8)
    tifffile.imwrite(tmp_path / "a.tif", data, metadata={"axes": "TZCYX"}, photometric="minisblack")
    image = io.read(tmp_path / "a.tif")
    assert image.meta["axes"] == "ZCYX" and image.array.shape == (3, 2, 8, 8)


def test_shaped_stack_without_axes_is_zyx(io, tmp_path):
    tifffile.imwrite(tmp_path / "a.tif", np.zeros((5, 8, 8), np.uint16), photometric="minisblack")
    image = io.read(tmp_path / "a.tif")
    assert image.meta["axes"] == "ZYX" and image.spacing is None


def test_rgb_samples_are_a_channel_axis(io, tmp_path):
    tifffile.imwrite(tmp_path / "a.tif", np.zeros((8, 9, 3), np.uint8), photometric="rgb")
    image = io.read(tmp_path / "a.tif")
    assert image.meta["axes"] == "YXC"


@pytest.mark.parametrize(
    ("axes", "shape", "expected"),
    [
        ("TZCYX", (1, 3, 2, 8, 8), "ZCYX"),
        ("TZCYX", (4, 3, 2, 8, 8), "TZCYX"),
        ("QYX", (5, 8, 8), "ZYX"),
        ("IYX", (5, 8, 8), "ZYX"),
        ("QQYX", (2, 5, 8, 8), "QQYX"),
        ("ZYXS", (3, 8, 8, 3), "ZYXC"),
        ("YX", (8, 8), "YX"),
    ],
)
def test_normalise_axes(axes, shape, expected):
    normalised, index = tiff_meta.normalise_axes(axes, shape)
    assert normalised == expected
    assert np.zeros(shape)[index].ndim == len(expected)


def test_unit_table():
    assert tiff_meta.um_per_unit("µm") == 1.0
    assert tiff_meta.um_per_unit("Micron") == 1.0
    assert tiff_meta.um_per_unit("pixel") is None
    assert tiff_meta.um_per_unit(None) is None


def test_truncated_tiff_is_a_data_error_naming_the_file(io, tmp_path):
    tifffile.imwrite(tmp_path / "whole.tif", np.ones((4, 32, 32), np.uint16), photometric="minisblack")
    data = (tmp_path / "whole.tif").read_bytes()
    (tmp_path / "cut.tif").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"cut\.tif.*truncated or corrupt"):
        io.read(tmp_path / "cut.tif")


def test_not_a_tiff_is_a_data_error(io, tmp_path):
    (tmp_path / "junk.tiff").write_bytes(b"hello, not an image" * 10)
    with pytest.raises(DataError, match=r"junk\.tiff.*TIFF could not decode it"):
        io.read(tmp_path / "junk.tiff")


def test_unreadable_nifti_is_a_data_error(io, tmp_path):
    (tmp_path / "bad.nii.gz").write_bytes(b"\x1f\x8b not really gzip" * 5)
    with pytest.raises(DataError, match=r"bad\.nii\.gz.*SimpleITK could not decode it"):
        io.read(tmp_path / "bad.nii.gz")


def test_corrupt_npy_and_missing_files_are_data_errors(io, tmp_path):
    (tmp_path / "bad.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(DataError, match=r"bad\.npy"):
        io.read(tmp_path / "bad.npy")
    with pytest.raises(DataError, match=r"gone\.tif: no such file"):
        io.read(tmp_path / "gone.tif")

"""Spacing units: conversion between readers' units, the dataset's unit, and the fingerprint built from both."""

import logging

import pytest

from biom3d.core.builtins.fingerprint import build_fingerprint
from biom3d.core.builtins.spacing import spacing_3d
from biom3d.core.imagedata import ImageData
from biom3d.core.protocols import CaseStats
from biom3d.core.units import clean_unit, convert_spacing, dataset_unit, mm_per_unit, shown, um_per_unit


def test_lengths_convert_between_the_readers_units():
    assert convert_spacing((2.0, 0.5, 0.5), "um", "mm") == pytest.approx((0.002, 0.0005, 0.0005))
    assert convert_spacing((0.002, 0.0005), "mm", "micron") == pytest.approx((2.0, 0.5))
    assert convert_spacing((100.0,), "nm", "\\u00B5m") == pytest.approx((0.1,))  # ImageJ's escaped micro sign
    assert convert_spacing((1.0,), "pixel", "um") is None and convert_spacing((1.0,), "um", None) is None
    assert mm_per_unit("um") == pytest.approx(1e-3) and mm_per_unit("pixel") == 1.0 and mm_per_unit("m") == 1000.0
    assert um_per_unit(" Micron ") == 1.0 and um_per_unit("px") is None and clean_unit("pixels") is None


def test_the_dataset_unit_is_the_commonest_length_unit():
    assert dataset_unit(["mm", "um", "um", "pixel", None]) == "um"
    assert dataset_unit(["mm", "um"]) == "mm"  # a tie: the first image's
    assert dataset_unit(["pixel", None]) is None
    assert shown("micron") == "µm" and shown("mm") == "mm" and shown(None) == ""


def _case(key, spacing, unit, shape=(10, 20, 20)):
    return CaseStats(key, shape, spacing, 1, extra={"channel_axis": None, "samples": [[0.0, 1.0]]}, unit=unit)


def test_the_fingerprint_converts_every_case_to_the_dataset_unit():
    fp = build_fingerprint([_case("a", (2.0, 0.5, 0.5), "um"), _case("b", (2.0, 0.5, 0.5), "um"),
                            _case("c", (0.004, 0.001, 0.001), "mm")], num_classes=1, multilabel=False)
    assert fp["spacing_unit"] == "um" and fp["spacing"] == pytest.approx([2.0, 0.5, 0.5])
    # c's voxels are twice as large: at 0.5 um it is 20 x 40 x 40, which the median shape counts
    assert fp["median_shape"] == [10.0, 20.0, 20.0]
    mixed = build_fingerprint([_case("a", (2.0, 0.5, 0.5), "um"), _case("c", (0.004, 0.001, 0.001), "mm")],
                              num_classes=1, multilabel=False)
    assert mixed["spacing_unit"] == "um" and mixed["spacing"] == pytest.approx([3.0, 0.75, 0.75])  # not 1.002


def test_a_case_without_a_length_unit_is_kept_as_is_and_said(caplog):
    with caplog.at_level(logging.WARNING, logger="biom3d"):
        fp = build_fingerprint([_case("a", (2.0, 0.5, 0.5), "um"), _case("b", (2.0, 0.5, 0.5), "pixel")],
                               num_classes=1, multilabel=False)
    assert fp["spacing"] == pytest.approx([2.0, 0.5, 0.5])
    assert "b: its spacing [2.0, 0.5, 0.5] has no length unit (pixel); taken as µm" in caplog.text
    uncalibrated = build_fingerprint([_case("a", None, None)], num_classes=1, multilabel=False)
    assert uncalibrated["spacing"] is None and uncalibrated["spacing_unit"] is None


def test_an_image_is_resampled_in_the_fingerprints_unit():
    fingerprint = {"spacing": [2.0, 0.5, 0.5], "spacing_unit": "um"}
    nifti = ImageData(array=None, spacing=(0.002, 0.0005, 0.0005), meta={"unit": "mm"})
    assert spacing_3d(nifti, (16, 24, 24), fingerprint) == pytest.approx((2.0, 0.5, 0.5))
    flat = ImageData(array=None, spacing=(0.0005, 0.0005), meta={"unit": "mm"})
    assert spacing_3d(flat, (1, 24, 24), fingerprint) == pytest.approx((2.0, 0.5, 0.5))
    # a reader that names no unit keeps the values as read
    assert spacing_3d(ImageData(array=None, spacing=(2.0, 1.0, 1.0)), (4, 4, 4), fingerprint) == (2.0, 1.0, 1.0)


def test_a_run_that_recorded_no_unit_takes_far_off_values_in_the_unit_that_brings_them_near(caplog):
    """A version-1 fingerprint holds its images' values as their reader gave them then (MONAI's NIfTI reader:
    the header's µm; it gives mm now)."""
    legacy = {"spacing": [2.0, 0.5, 0.5]}
    nifti = ImageData(array=None, spacing=(0.002, 0.0005, 0.0005), path="new.nii.gz", meta={"unit": "mm"})
    with caplog.at_level(logging.WARNING, logger="biom3d"):
        assert spacing_3d(nifti, (16, 24, 24), legacy) == pytest.approx((2.0, 0.5, 0.5))
    assert "new.nii.gz: its spacing [0.002, 0.0005, 0.0005] mm is orders of magnitude" in caplog.text
    near = ImageData(array=None, spacing=(1.0, 0.25, 0.25), meta={"unit": "mm"})
    assert spacing_3d(near, (16, 24, 24), legacy) == (1.0, 0.25, 0.25)  # within reach: as before, as read


def test_micrometres_under_a_millimetre_header_are_taken_as_read_not_resampled_1000_fold(caplog):
    from biom3d.core.units import spacing_near

    assert spacing_near((2.0, 0.5, 0.5), "mm", "um", (2.0, 0.5, 0.5)) == ((2.0, 0.5, 0.5), True)
    assert spacing_near((0.002, 0.0005, 0.0005), "mm", "um", (2.0, 0.5, 0.5))[1] is False
    assert spacing_near((2.0, 0.5, 0.5), "mm", "um", None) == ((2000.0, 500.0, 500.0), False)  # nothing to judge by
    fingerprint = {"spacing": [2.0, 0.5, 0.5], "spacing_unit": "um"}
    mislabelled = ImageData(array=None, spacing=(2.0, 0.5, 0.5), path="odd.nii.gz", meta={"unit": "mm"})
    with caplog.at_level(logging.WARNING, logger="biom3d"):
        assert spacing_3d(mislabelled, (16, 24, 24), fingerprint) == (2.0, 0.5, 0.5)
        fp = build_fingerprint([_case("a", (2.0, 0.5, 0.5), "um"), _case("b", (2.0, 0.5, 0.5), "um"),
                                _case("c", (2.0, 0.5, 0.5), "mm")], num_classes=1, multilabel=False)
    assert "odd.nii.gz: its spacing [2.0, 0.5, 0.5] is in mm by its header" in caplog.text
    assert "c: its spacing [2.0, 0.5, 0.5] is in mm by its header" in caplog.text
    assert fp["spacing"] == pytest.approx([2.0, 0.5, 0.5]) and fp["median_shape"] == [10.0, 20.0, 20.0]
    # two cases, one of each: the mislabelled one does not move the reference it is judged by
    pair = build_fingerprint([_case("a", (2.0, 0.5, 0.5), "um"), _case("c", (2.0, 0.5, 0.5), "mm")],
                             num_classes=1, multilabel=False)
    assert pair["spacing"] == pytest.approx([2.0, 0.5, 0.5]) and pair["median_shape"] == [10.0, 20.0, 20.0]


def test_a_resampling_past_memory_is_refused_naming_the_file():
    from biom3d.core.errors import DataError

    fingerprint = {"spacing": [0.01, 0.01, 0.01], "spacing_unit": "um"}
    huge = ImageData(array=None, spacing=(1.0, 1.0, 1.0), path="big.tif", meta={"unit": "um"})
    with pytest.raises(DataError, match=r"big.tif: resampling .* 10000 x 10000 x 10000 voxels .*calibration"):
        spacing_3d(huge, (100, 100, 100), fingerprint)
    assert spacing_3d(huge, (4, 4, 4), {"spacing": [0.25, 0.25, 0.25], "spacing_unit": "um"}) == (1.0, 1.0, 1.0)
    with pytest.raises(DataError, match=r"big.tif: resampling .* 1 x 1 x 1 voxels"):  # 1000-fold smaller each way
        spacing_3d(huge, (16, 24, 24), {"spacing": [1000.0, 1000.0, 1000.0], "spacing_unit": "um"})

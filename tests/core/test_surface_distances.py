"""HD95 and ASSD: measured along the array's (D, H, W) axes in their spacing, on in-plane surfaces for a 2D image
stored as (1, H, W), with the image border as background, and undefined (NaN) only where one mask is empty."""

import math

import numpy as np
import pytest

from biom3d.core.surface import surface_distances


def _voxel(shape, at):
    mask = np.zeros(shape, bool)
    mask[at] = True
    return mask


@pytest.mark.parametrize(("axis", "expected"), [(0, 6.0), (1, 1.5), (2, 0.9)])
def test_each_axis_is_measured_in_its_own_spacing(axis, expected):
    spacing = (2.0, 0.5, 0.3)  # (D, H, W), as ImageData and the readers give it
    at = [4, 4, 4]
    pred = _voxel((9, 9, 9), tuple(at))
    at[axis] += 3
    truth = _voxel((9, 9, 9), tuple(at))
    assert surface_distances(pred, truth, spacing) == pytest.approx({"hd95": expected, "assd": expected})


def test_a_2d_image_stored_as_one_slice_has_in_plane_surfaces():
    inner, outer = np.zeros((1, 20, 20), bool), np.zeros((1, 20, 20), bool)
    inner[0, 5:15, 5:15] = True  # surface: a ring of 36 pixels, each 1 from the outer ring
    outer[0, 4:16, 4:16] = True  # a ring of 44: 40 at 1 from the inner ring, 4 corners at sqrt(2)
    found = surface_distances(inner, outer, spacing=(0.5, 0.5))  # a (y, x) spacing, as a 2D reader gives it
    assert found["hd95"] == pytest.approx(math.sqrt(2) / 2)  # 4 of 44 > 5%: the 95th percentile is a corner
    assert found["assd"] == pytest.approx((76 + 4 * math.sqrt(2)) / 80 / 2)


def test_the_image_border_counts_as_background_as_in_a_larger_image():
    rng = np.random.default_rng(3)
    pred, truth = rng.random((8, 10, 12)) > 0.4, rng.random((8, 10, 12)) > 0.6
    pred[0], truth[:, -1] = True, True  # foreground on the border: its faces there are surface
    padded = [np.pad(m, 3) for m in (pred, truth)]
    assert surface_distances(pred, truth, (1.5, 1, 1)) == pytest.approx(surface_distances(*padded, (1.5, 1, 1)))


def test_identical_masks_are_zero_apart_and_an_empty_side_is_undefined():
    blob = np.zeros((6, 8, 8), bool)
    blob[1:4, 2:6, 3:7] = True
    empty = np.zeros_like(blob)
    assert surface_distances(blob, blob) == {"hd95": 0.0, "assd": 0.0}
    assert surface_distances(empty, empty) == {"hd95": 0.0, "assd": 0.0}  # both empty agree, as Dice 1
    assert all(math.isnan(v) for v in surface_distances(blob, empty).values())
    assert all(math.isnan(v) for v in surface_distances(empty, blob).values())


def test_bad_inputs_say_what_is_wrong():
    with pytest.raises(ValueError, match="differ in shape"):
        surface_distances(np.zeros((2, 3, 4)), np.zeros((2, 3, 5)))
    with pytest.raises(ValueError, match="must be positive"):
        surface_distances(np.ones((2, 3, 4)), np.ones((2, 3, 4)), (1.0, 0.0, 1.0))

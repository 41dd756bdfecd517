"""A mask is paired with its image's voxels by their headers: flips and swaps undone, rotations refused."""

import numpy as np
import pytest

from biom3d.core.alignment import align_mask
from biom3d.core.errors import DataError
from biom3d.core.imagedata import ImageData

IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


def _image(array, spacing=(2.0, 0.5, 0.7), origin=(5.0, -3.0, 10.0), direction=IDENTITY, unit="mm"):
    return ImageData(array=array, spacing=spacing, origin=origin, direction=direction, path="img.nii.gz",
                     meta={"axes": "ZYX", "unit": unit})


def _world(image: ImageData, index_zyx):
    """World (x, y, z) of a voxel index, as ITK computes it."""
    d = np.asarray(image.direction).reshape(3, 3)
    return np.asarray(image.origin[::-1]) + d @ (np.asarray(index_zyx[::-1]) * np.asarray(image.spacing[::-1]))


def _mask_from(image: ImageData, labels, axis_flips=(), swap_yx=False):
    """The same labels as another tool would store them: reoriented, with the header that keeps them in place."""
    arr = labels
    d = np.asarray(image.direction, dtype=float).reshape(3, 3).copy()
    spacing, shape = list(image.spacing), list(labels.shape)
    origin_index = [0, 0, 0]
    for axis in axis_flips:  # array axis (z=0, y=1, x=2)
        arr = np.flip(arr, axis)
        d[:, 2 - axis] *= -1
        origin_index[axis] = shape[axis] - 1
    origin = tuple(_world(image, origin_index)[::-1])
    if swap_yx:
        arr = np.swapaxes(arr, 1, 2)
        d[:, [0, 1]] = d[:, [1, 0]]
        spacing = [spacing[0], spacing[2], spacing[1]]
    return ImageData(array=np.ascontiguousarray(arr), spacing=tuple(spacing), origin=origin,
                     direction=tuple(d.ravel()), path="mask.nii.gz", meta={"axes": "ZYX", "unit": "mm"})


@pytest.fixture
def labels():
    return np.random.default_rng(0).integers(0, 3, (4, 5, 6)).astype(np.uint8)


def test_a_mask_on_the_same_grid_is_kept_as_it_is(labels):
    image = _image(np.zeros_like(labels, dtype=np.float32))
    array, notes = align_mask(labels, _mask_from(image, labels), image)
    assert array is labels and notes == []


@pytest.mark.parametrize("flips, swap", [((2,), False), ((0, 1), False), ((), True), ((1,), True)])
def test_a_flipped_or_swapped_mask_is_put_back_on_the_image_grid(labels, flips, swap):
    image = _image(np.zeros_like(labels, dtype=np.float32))
    mask = _mask_from(image, labels, flips, swap)
    assert not np.array_equal(mask.array, labels) or swap
    array, notes = align_mask(mask.array, mask, image)
    np.testing.assert_array_equal(array, labels)
    assert len(notes) == 1 and "another orientation" in notes[0] and "mask.nii.gz" in notes[0]
    if flips:
        assert "flipped along " + ", ".join("zyx"[a] for a in sorted(flips, reverse=True)) in notes[0]


def test_an_oblique_image_and_its_flipped_mask(labels):
    c, s = np.cos(0.3), np.sin(0.3)
    image = _image(np.zeros_like(labels, dtype=np.float32), direction=(c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0))
    mask = _mask_from(image, labels, (2,))
    array, notes = align_mask(mask.array, mask, image)
    np.testing.assert_array_equal(array, labels)
    assert len(notes) == 1


def test_a_rotated_mask_is_refused_naming_both_files(labels):
    image = _image(np.zeros_like(labels, dtype=np.float32))
    c, s = np.cos(0.3), np.sin(0.3)
    mask = ImageData(labels, image.spacing, image.origin, (c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0), "mask.nii.gz",
                     {"axes": "ZYX", "unit": "mm"})
    with pytest.raises(DataError, match=r"mask mask.nii.gz: .*rotated against its image's .*img.nii.gz.*Resample"):
        align_mask(labels, mask, image)


def test_other_spacing_and_origin_are_said_not_changed(labels):
    image = _image(np.zeros_like(labels, dtype=np.float32))
    moved = ImageData(labels, (1.0, 0.5, 0.7), (5.0, -3.0, 12.0), IDENTITY, "mask.nii.gz", {"axes": "ZYX", "unit": "mm"})
    array, notes = align_mask(labels, moved, image, what="ground truth")
    assert array is labels and len(notes) == 2
    assert notes[0].startswith("ground truth mask.nii.gz: spacing (1, 0.5, 0.7) mm differs from its image's (2, 0.5, 0.7)")
    assert "origin lies 2 mm from its image's" in notes[1]


def test_units_are_converted_before_comparing_and_tiffs_have_no_orientation(labels):
    image = _image(np.zeros_like(labels, dtype=np.float32))
    in_um = ImageData(labels, (2000.0, 500.0, 700.0), None, None, "mask.tif", {"axes": "ZYX", "unit": "um"})
    assert align_mask(labels, in_um, image) == (labels, [])
    bare = ImageData(labels, None, None, None, "mask.npy", {})
    assert align_mask(labels, bare, image) == (labels, [])


def test_a_multilabel_mask_with_channels_is_reoriented_on_its_spatial_axes(labels):
    image = _image(np.zeros_like(labels, dtype=np.float32))
    flipped = _mask_from(image, labels, (2,))
    channels = np.stack([flipped.array == 1, flipped.array == 2], axis=-1)  # ZYXC, as NIfTI stores it
    flipped.meta["axes"] = "ZYXC"
    array, notes = align_mask(channels, flipped, image)
    np.testing.assert_array_equal(array[..., 0], labels == 1)
    np.testing.assert_array_equal(array[..., 1], labels == 2)


def test_a_four_d_multimodal_image_is_aligned_by_its_spatial_directions(labels):
    """SimpleITK reads an MSD-style (x, y, z, modality) NIfTI as one 4-D image: a 16-value direction."""
    image = _image(np.zeros((2, *labels.shape), dtype=np.float32))
    mask = _mask_from(image, labels, (2,))
    image.direction, image.meta["axes"] = tuple(np.eye(4).ravel()), "CZYX"
    array, notes = align_mask(mask.array, mask, image)
    np.testing.assert_array_equal(array, labels)
    assert len(notes) == 1 and "flipped along x" in notes[0]

import numpy as np
import pytest

from biom3d.core.builtins.plugin import PreprocessParams
from biom3d.core.builtins.preprocessing import SegPreprocessor, canonical_mask, to_channels_first
from biom3d.core.builtins.resample import coarse_axis, resample_labels, target_shape
from biom3d.core.context import RunContext
from biom3d.core.errors import DataError


@pytest.mark.parametrize(
    "shape, axes, expected, axis",
    [
        ((5, 6, 7), None, (1, 5, 6, 7), None),
        ((6, 7), None, (1, 1, 6, 7), None),
        ((2, 5, 6, 7), None, (2, 5, 6, 7), 0),
        ((5, 6, 7, 3), None, (3, 5, 6, 7), 3),
        ((5, 2, 6, 7), "ZCYX", (2, 5, 6, 7), 1),
        ((3, 6, 7), "CYX", (3, 1, 6, 7), 0),
        ((1, 5, 1, 6, 7), "TZCYX", (1, 5, 6, 7), 1),
        ((2, 5, 6, 7), "QQYX", (2, 5, 6, 7), 0),  # a TIFF without metadata: the shape decides, as for NumPy
        ((5, 6, 7, 3), "QYXQ", (3, 5, 6, 7), 3),
    ],
)
def test_channel_axis_detection(shape, axes, expected, axis):
    arr = np.zeros(shape)
    out, found = to_channels_first(arr, axes, None, "img.tif")
    assert out.shape == expected and found == axis


def test_channel_axis_given_or_ambiguous():
    arr = np.zeros((6, 6, 6, 6))
    with pytest.raises(DataError, match="img.tif: cannot tell which axis.*--channel-axis"):
        to_channels_first(arr, None, None, "img.tif")
    out, axis = to_channels_first(np.zeros((6, 7, 2, 8)), None, 2, "img.tif")
    assert out.shape == (2, 6, 7, 8) and axis == 2


def test_mask_corrections_warn():
    img_shape = (4, 5, 6)
    m = np.zeros(img_shape, np.uint8)
    m[1:3, 1:3, 1:3] = 255
    out, warns = canonical_mask(m, img_shape, 1, False, "auto", "m.tif")
    assert set(np.unique(out)) == {0, 1} and "relabelled" in warns[0]

    grey = np.zeros(img_shape, np.uint8)
    grey[0], grey[1] = 100, 200
    out, _ = canonical_mask(grey, img_shape, 2, False, "auto", "m.tif")
    assert sorted(np.unique(out)) == [0, 1, 2] and (out[1] == 2).all()

    permuted = np.transpose(m, (2, 0, 1))
    out, warns = canonical_mask(permuted, img_shape, 1, False, "auto", "m.tif")
    assert out.shape == img_shape and np.array_equal(out > 0, m > 0) and "reordered" in warns[0]

    onehot = np.stack([m == 0, m > 0]).astype(np.uint8)
    out, warns = canonical_mask(onehot, img_shape, 1, False, "auto", "m.tif")
    assert np.array_equal(out, (m > 0).astype(np.uint8)) and "one-hot" in warns[-1]

    out, _ = canonical_mask((m > 0).astype(np.uint8), img_shape, 1, True, "auto", "m.tif")
    assert out.shape == (1, *img_shape)


def test_multilabel_masks_are_read_in_the_layout_their_reader_names():
    rng = np.random.default_rng(0)
    channels = (rng.random((2, 4, 5, 6)) > 0.5).astype(np.uint8)  # (K, D, H, W)
    stored = {"ZCYX": np.transpose(channels, (1, 0, 2, 3)),  # ImageJ hyperstack: biom3d's own TIFF masks
              "ZYXC": np.transpose(channels, (1, 2, 3, 0)),  # NIfTI's fifth dimension
              "CZYX": channels}
    for axes, arr in stored.items():
        out, _ = canonical_mask(arr, (4, 5, 6), 2, True, "auto", "m.tif", axes=axes)
        assert np.array_equal(out, channels), axes
    with pytest.raises(DataError, match="no axis of 2 or 3 channels"):  # without axes: channels first or last
        canonical_mask(stored["ZCYX"], (4, 5, 6), 2, True, "auto", "m.tif")

    flat = channels[:, :1]  # a 2D image's (K, 1, H, W), the stored layouts of which follow
    for arr, axes in ((flat, None), (flat[:, 0], None), (flat[:, 0], "CYX"), (np.moveaxis(flat[:, 0], 0, -1), "YXC")):
        out, _ = canonical_mask(arr, (1, 5, 6), 2, True, "auto", "m.tif", axes=axes)
        assert np.array_equal(out, flat), (arr.shape, axes)
    labels, _ = canonical_mask(flat[:, 0], (1, 5, 6), 1, False, "auto", "m.tif")  # one-hot, background first
    assert labels.shape == (1, 5, 6) and np.array_equal(labels[0], flat[1, 0])


def test_mask_refusals_name_file_and_values():
    img_shape = (4, 10, 10)
    instances = np.arange(400).reshape(img_shape) % 300
    with pytest.raises(DataError, match=r"mask m.tif: 300 grey levels \(0, 1, 2, .*for 1 class.*--mask-fix binarize"):
        canonical_mask(instances, img_shape, 1, False, "auto", "m.tif")
    out, warns = canonical_mask(instances, img_shape, 1, False, "binarize", "m.tif")
    assert out.sum() == (instances != 0).sum() and "thresholded" in warns[0]
    four = np.arange(400).reshape(img_shape) % 4
    with pytest.raises(DataError, match="4 grey levels"):
        canonical_mask(four * 10, img_shape, 2, False, "auto", "m.tif")
    with pytest.raises(DataError, match="does not match its image"):
        canonical_mask(np.zeros((4, 9, 10)), img_shape, 1, False, "auto", "m.tif")
    with pytest.raises(DataError, match="relabel|grey levels"):
        canonical_mask((four > 0) * 255, img_shape, 1, False, "strict", "m.tif")


def _prep(**params):
    return SegPreprocessor(PreprocessParams(**params), RunContext(num_classes=2))


def test_zscore_and_ct_normalisation():
    rng = np.random.default_rng(0)
    img = np.stack([rng.normal(100, 5, (4, 8, 8)), rng.normal(-3, 2, (4, 8, 8))]).astype(np.float32)
    out = _prep().normalize(img, {})
    assert np.allclose(out.mean(axis=(1, 2, 3)), 0, atol=1e-5) and np.allclose(out.std(axis=(1, 2, 3)), 1, atol=1e-4)
    fp = {"intensity": [{"p00_5": 95, "p99_5": 105, "mean": 100, "std": 5}, {"p00_5": -5, "p99_5": 0, "mean": -2, "std": 1}]}
    ct = _prep(norm="ct").normalize(img, fp)
    assert ct[0].min() >= -1 - 1e-6 and ct[0].max() <= 1 + 1e-6 and ct[1].max() <= 2 + 1e-6
    whole = _prep(zscore_over="image").normalize(img, {})  # the original's: one mean/std over both channels
    np.testing.assert_allclose(whole, (img - img.mean()) / img.std(), rtol=1e-4, atol=1e-5)
    assert whole[0].mean() > 0.9 and whole[1].mean() < -0.9  # the channels keep their offset


def test_resampling_to_the_median_spacing():
    prep = _prep()
    fp = {"spacing": [2.0, 0.5, 0.5]}
    img = np.random.default_rng(0).random((1, 10, 20, 20)).astype(np.float32)
    out = prep.transform_image(img, (1.0, 0.5, 0.5), fp)
    assert out.shape == (1, 5, 20, 20)
    assert prep.transform_image(img, None, fp).shape == img.shape[:1] + img.shape[1:]  # no spacing: no resampling
    mask = np.zeros((10, 20, 20), np.uint8)
    mask[2:8, 5:15, 5:15] = 2
    mask[4:6, 8:12, 8:12] = 1
    m = prep.resample_mask(mask, (5, 40, 40), {"spacing": None})
    assert m.shape == (5, 40, 40) and set(np.unique(m)) == {0, 1, 2}
    assert target_shape((10, 20, 20), (1, 0.5, 0.5), (2, 0.5, 0.5)) == (5, 20, 20)


def test_anisotropic_axis_is_resampled_with_nearest_neighbours():
    assert coarse_axis((5.0, 1.0, 1.0), 3.0) == 0 and coarse_axis((2.0, 1.0, 1.0), 3.0) is None
    mask = np.zeros((4, 8, 8), np.uint8)
    mask[1] = 1
    out = resample_labels(mask, (8, 8, 8), num_labels=2, coarse=0)
    # every output slice is a copy of one input slice: no blended in-between slice
    for z in range(8):
        assert any(np.array_equal(out[z], mask[k]) for k in range(4))
    assert out.sum() == 2 * 64


def test_foreground_locations_are_capped_and_inside_the_class():
    prep = _prep(fg_samples=50)
    mask = np.zeros((6, 10, 10), np.uint8)
    mask[1:5, 2:8, 2:8] = 1
    mask[0, 0, :3] = 2
    fg = prep.foreground(mask, "case")
    assert fg["1"].shape == (50, 3) and (mask[tuple(fg["1"].T)] == 1).all()
    assert fg["2"].shape == (3, 3) and (mask[tuple(fg["2"].T)] == 2).all()
    assert np.array_equal(fg["1"], prep.foreground(mask, "case")["1"])  # deterministic per case


def test_the_plan_reads_the_stored_images_median_shape_as_the_original_does():
    """Spacings that vary: the original biom3d auto-configures from the images as stored (preprocess.py's
    data_fingerprint); nnU-Net from them resampled, here behind plan_from: resampled."""
    from biom3d.core.builtins.autoconfig import auto_config
    from biom3d.core.config import AutoConfigSettings

    fingerprint = {"num_images": 40, "median_shape": [30.0, 256.0, 256.0], "original_median_shape": [60.0, 256.0, 256.0]}
    budget = AutoConfigSettings()
    stored, resampled = auto_config([60, 256, 256], num_images=40), auto_config([30, 256, 256], num_images=40)
    assert stored.patch_size != resampled.patch_size  # the two rules differ here
    assert _prep().plan(fingerprint, budget)["patch_size"] == list(stored.patch_size)
    assert _prep(plan_from="resampled").plan(fingerprint, budget)["patch_size"] == list(resampled.patch_size)
    del fingerprint["original_median_shape"]  # a fingerprint of another preprocessor: its median
    assert _prep().plan(fingerprint, budget)["patch_size"] == list(resampled.patch_size)

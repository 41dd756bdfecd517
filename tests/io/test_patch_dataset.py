import numpy as np
import pytest
import torch

from biom3d.core.context import RunContext
from biom3d.core.folds import write_folds
from biom3d.io.dataset_params import PatchDatasetParams
from biom3d.io.datasets import (
    Augmenter,
    ForegroundRule,
    PatchData,
    crop_pad,
    crop_start,
)

PATCH = (8, 16, 16)
SHAPES = {"big": (24, 48, 48), "small": (5, 10, 12), "val": (5, 20, 20)}


def _write(root, name, shape, fg_box, labels=(1,)):
    """A 2-channel volume (channel 1 offset by +10, so each channel has its own minimum) and its mask."""
    rng = np.random.default_rng(len(name))
    image = rng.normal(size=(2, *shape)).astype(np.float32) + np.array([0, 10], np.float32)[:, None, None, None]
    mask = np.zeros(shape, np.uint8)
    for k, label in enumerate(labels):
        box = tuple(slice(s.start + k, s.stop) for s in fg_box)
        mask[box] = label
    for sub, arr in (("images", image), ("masks", mask)):
        (root / sub).mkdir(parents=True, exist_ok=True)
        np.save(root / sub / f"{name}.npy", arr)
    (root / "fg").mkdir(exist_ok=True)
    np.savez(root / "fg" / f"{name}.npz", **{str(k): np.argwhere(mask == k).astype(np.int32) for k in labels})
    return image


@pytest.fixture
def data_dir(tmp_path):
    _write(tmp_path, "big", SHAPES["big"], (slice(1, 4), slice(1, 6), slice(40, 47)), labels=(1, 2))  # at the border
    _write(tmp_path, "small", SHAPES["small"], (slice(1, 3), slice(2, 5), slice(2, 5)))  # smaller than the patch
    _write(tmp_path, "val", SHAPES["val"], (slice(1, 4), slice(4, 8), slice(4, 8)))  # a slab thinner than the patch
    write_folds(tmp_path / "folds.csv", {"big.npy": 1, "small.npy": 1, "val.npy": 0})
    return tmp_path


def _data(data_dir, batch_size=2, aug=(12, 23, 23), **params):
    ctx = RunContext(num_classes=2, patch_size=PATCH, aug_patch_size=aug, data_dir=data_dir, batch_size=batch_size,
                     folds_path=data_dir / "folds.csv", fold=0, seed=5)
    return PatchData(PatchDatasetParams(**params), ctx)


def test_items_have_the_patch_shape_and_types(data_dir):
    data = _data(data_dir)
    ds = data.train_dataset(12)
    assert len(ds) == 12 and data.train_names == ["big.npy", "small.npy"] and data.val_names == ["val.npy"]
    for i in range(12):
        item = ds[i]
        assert set(item) == {"image", "mask"}  # "valid" is for validation only
        assert item["image"].shape == (2, *PATCH) and item["image"].dtype == torch.float32
        assert item["mask"].shape == PATCH and item["mask"].dtype == torch.int64


def test_foreground_rule_is_the_originals_last_items_of_each_batch():
    assert [ForegroundRule(0.33, 2)(i) for i in range(4)] == [False, True, False, True]
    assert [ForegroundRule(0.33, 4)(i) for i in range(4)] == [False, False, False, True]
    assert [ForegroundRule(0.33, 3)(i) for i in range(3)] == [False, False, True]
    assert [ForegroundRule(0.5, 6)(i) for i in range(6)] == [False] * 3 + [True] * 3
    assert not ForegroundRule(0.33, 1)(0) and ForegroundRule(1.0, 1)(0) and not ForegroundRule(0.0, 4)(3)


def test_the_foreground_items_of_a_batch_hold_foreground(data_dir):
    ds = _data(data_dir, augment=False).train_dataset(60)
    torch.manual_seed(0)
    assert all(bool(ds[i]["mask"].any()) for i in range(1, 60, 2))  # batch 2: one patch per batch on foreground


def test_foreground_crops_are_centred_on_their_voxel_or_clamped_into_the_volume():
    fg = {"1": np.array([[0, 0, 47]]), "2": np.zeros((0, 3), int)}  # an empty class is never drawn
    assert crop_start((24, 48, 48), (8, 16, 16), fg, None) == [-4, -8, 39]  # the original's: past the border
    assert crop_start((24, 48, 48), (8, 16, 16), fg, None, inside=True) == [0, 0, 32]
    # an axis smaller than the crop: the crop holds the whole axis
    assert crop_start((5, 48, 48), (8, 16, 16), {"1": np.array([[0, 20, 20]])}, None, inside=True) == [-3, 12, 12]
    assert crop_start((5, 48, 48), (8, 16, 16), {"1": np.array([[4, 20, 20]])}, None, inside=True) == [0, 12, 12]
    # without foreground, the original draws the crop's centre anywhere in the volume
    gen = torch.Generator().manual_seed(0)
    starts = np.array([crop_start((24, 48, 48), (8, 16, 16), None, gen) for _ in range(2000)])
    assert (starts.min(0) == [-4, -8, -8]).all() and (starts.max(0) == [19, 39, 39]).all()


def _original_crop(image, center, size):
    """The original biom3d's centered_crop then centered_pad (semseg_patch_fast.py), written out again here."""
    start = np.asarray(center) - np.asarray(size) // 2
    end = start + np.asarray(size)
    start = np.maximum(0, start)
    crop = image[(slice(None), *(slice(a, b) for a, b in zip(start, end, strict=True)))]
    before = (np.asarray(size) - np.asarray(crop.shape[1:])) // 2
    after = np.asarray(size) - np.asarray(crop.shape[1:]) - before
    return np.pad(crop, [(0, 0), *zip(before, after, strict=True)], constant_values=0)


def test_a_centred_crop_is_the_originals_cut_off_and_zero_padded_in_the_middle(data_dir):
    data = _data(data_dir, augment=False)
    ds = data.train_dataset(4)
    image = np.load(data_dir / "images" / "big.npy")
    for center in ([0, 0, 47], [3, 20, 0], [5, 11, 30], [1, 47, 2]):
        start = [c - p // 2 for c, p in zip(center, PATCH, strict=True)]
        for size in (PATCH, (12, 23, 23)):  # the patch, and a rotation's enlarged crop around the same voxel
            got, _ = ds.read("big.npy", start, size)
            np.testing.assert_array_equal(got.numpy(), _original_crop(image, center, size))
    assert data.augmenter is None and _data(data_dir).augmenter.rotate.transforms[0].default_pad_value == 0


def test_a_centred_validation_item_marks_the_part_of_the_volume_it_holds(data_dir):
    ds = _data(data_dir).val_dataset(6)
    raw = np.load(data_dir / "images" / "val.npy")
    for i in range(6):
        item = ds[i]
        valid = item["valid"][0].numpy()
        window = item["image"].numpy()
        assert np.isin(window[0][valid], raw[0]).all() and (window[:, ~valid] == 0).all()
        assert not item["mask"][~item["valid"][0]].any()


def test_a_volume_larger_than_the_patch_is_never_padded_inside(data_dir, monkeypatch):
    data = _data(data_dir, p_rotate=0.0, crop="inside", pad="minimum")
    data.train_names = ["big.npy"]  # foreground at the border, where unclamped crops would leave the volume
    monkeypatch.setattr(data.store, "background", lambda name: pytest.fail(f"{name} was padded"))
    ds = data.train_dataset(40)
    torch.manual_seed(1)
    assert all(bool(ds[i]["mask"].any()) for i in range(1, 40, 2))
    val = _data(data_dir, crop="inside", pad="minimum")
    val.val_names = ["big.npy"]
    monkeypatch.setattr(val.store, "background", lambda name: pytest.fail(f"{name} was padded"))
    assert all(bool(val.val_dataset(6)[i]["valid"].all()) for i in range(6))


def test_a_rotation_reads_the_patch_box_grown_on_both_sides(data_dir, monkeypatch):
    data = _data(data_dir, augment=False, crop="inside", pad="minimum")
    data.train_names = ["big.npy"]
    plain = data.train_dataset(8)
    torch.manual_seed(2)
    expected = [plain[i]["image"] for i in range(8)]
    rotated = _data(data_dir, p_rotate=1.0, crop="inside", pad="minimum").train_dataset(8)
    rotated.names = ["big.npy"]
    seen = []

    def identity_rotation(self, img, msk, *, rotate):  # the centre crop alone, as tio.Crop with self.rotate's bounds
        seen.append(tuple(img.shape[1:]))
        return img[:, 2:10, 3:19, 3:19], msk[2:10, 3:19, 3:19]

    monkeypatch.setattr(Augmenter, "__call__", identity_rotation)
    monkeypatch.setattr(Augmenter, "draw_rotation", lambda self: True)
    torch.manual_seed(2)
    assert all(torch.equal(rotated[i]["image"], expected[i]) for i in range(8))
    assert set(seen) == {(12, 23, 23)}
    assert rotated.augmenter.rotate.transforms[1].cropping == (2, 2, 3, 4, 3, 4)


def test_pad_minimum_is_the_volumes_per_channel_minimum(data_dir):
    raw = np.load(data_dir / "images" / "small.npy")
    raw_mask = np.load(data_dir / "masks" / "small.npy")
    ds = _data(data_dir, augment=False, crop="inside", pad="minimum").train_dataset(4)
    ds.names = ["small.npy"]
    torch.manual_seed(0)
    for i in range(4):
        image, mask = ds[i]["image"].numpy(), ds[i]["mask"].numpy()
        padding = np.prod(PATCH) - np.prod(SHAPES["small"])  # the whole (smaller) volume lies in the crop
        for c in range(2):
            assert raw[c].min() < [-1, 9][c]  # far from 0, the z-scored mean
            assert (image[c] == raw[c].min()).sum() == padding + 1  # the padding, and the volume's own minimum
        assert np.array_equal(np.sort(mask[mask > 0]), np.sort(raw_mask[raw_mask > 0]))


def test_validation_items_mark_the_voxels_inside_the_volume(data_dir):
    ds = _data(data_dir, crop="inside", pad="minimum").val_dataset(6)
    raw, raw_1 = np.load(data_dir / "images" / "val.npy")
    for i in range(6):
        item = ds[i]
        valid = item["valid"]
        assert valid.shape == (1, *PATCH) and valid.dtype == torch.bool
        planes = valid[0].all(dim=(1, 2))
        assert int(planes.sum()) == SHAPES["val"][0] and int(valid.sum()) == SHAPES["val"][0] * 16 * 16
        inside = np.flatnonzero(planes.numpy())
        assert inside[-1] - inside[0] == SHAPES["val"][0] - 1  # one contiguous block: the slab
        window = item["image"][0].numpy()
        assert np.isin(window[valid[0].numpy()], raw).all()  # unaugmented volume values...
        assert (window[~valid[0].numpy()] == raw.min()).all()  # ... and background padding
        assert (item["image"][1][~valid[0]] == raw_1.min()).all()
        assert not item["mask"][~valid[0]].any()
    again = ds[4]
    assert torch.equal(ds[4]["image"], again["image"]) and torch.equal(ds[4]["valid"], again["valid"])


def test_same_seed_same_augmented_items(data_dir):
    ds = _data(data_dir, p_rotate=1.0).train_dataset(4)
    torch.manual_seed(11)
    first = [ds[i]["image"] for i in range(4)]
    torch.manual_seed(11)
    second = [ds[i]["image"] for i in range(4)]
    assert all(torch.equal(x, y) for x, y in zip(first, second, strict=True))


def test_augmentations_are_the_papers():
    params = PatchDatasetParams()
    iso = Augmenter(params, (32, 32, 32), (55, 55, 55), multilabel=False)
    affine, crop = iso.rotate.transforms
    assert iso.p_rotate == 0.2 and affine.degrees == (-45.0, 45.0) * 3 and affine.scales == (1.0,) * 6
    assert crop.cropping == (11, 12) * 3  # the centre of the enlarged crop, as the original's tio.Crop
    names = [type(t).__name__ for t in iso.transform.transforms]
    assert names == ["RandomAffine", "RandomAnisotropy", "RandomFlip", "RandomBiasField", "RandomBlur", "RandomNoise",
                     "RandomSwap", "RandomGamma"]
    scale, aniso, flip, bias, blur, noise, swap, gamma = iso.transform.transforms
    assert scale.probability == 0.2 and scale.scales == (0.7, 1.4) * 3 and scale.degrees == (0.0,) * 6
    assert aniso.probability == 0.1 and aniso.axes == (0, 1, 2) and aniso.downsampling_range == (1.0, 1.5)
    assert flip.axes == (0, 1, 2) and flip.flip_probability == 0.5
    assert bias.probability == 0.15 and bias.coefficients_range == (-0.2, 0.2)
    assert blur.probability == 0.2 and blur.std_ranges == (0.5, 1.0) * 3
    assert noise.probability == 0.2 and noise.std_range == (0.0, 0.1)
    assert swap.probability == 0.2 and swap.patch_size.tolist() == [4, 4, 4] and swap.num_iterations == 100
    assert gamma.probability == 0.3 and gamma.log_gamma_range == (-0.35, 0.4)

    thin = Augmenter(params, (16, 128, 128), (16, 181, 181), multilabel=False)
    assert thin.rotate.transforms[0].degrees == (-180.0, 180.0, 0.0, 0.0, 0.0, 0.0)  # about the smallest axis only
    assert thin.transform.transforms[1].axes == (1, 2)  # anisotropy on the axes > 3x the smallest
    flat = Augmenter(params, (1, 64, 64), (1, 91, 91), multilabel=False)
    assert flat.transform.transforms[2].axes == (1, 2)  # a 1-voxel axis never flips


def test_rotation_is_drawn_one_time_in_five_and_then_reads_the_enlarged_crop(data_dir, monkeypatch):
    data = _data(data_dir)
    seen = []
    monkeypatch.setattr(Augmenter, "__call__", lambda self, img, msk, *, rotate: (
        seen.append((rotate, tuple(img.shape[1:]))) or (img[:, 2:10, 3:19, 3:19] if rotate else img, msk)))
    ds = data.train_dataset(500)
    torch.manual_seed(3)
    for i in range(500):
        ds[i]
    rotated = [shape for rotate, shape in seen if rotate]
    assert 70 <= len(rotated) <= 130  # binomial(500, 0.2): 100 +/- 3 sd
    assert set(rotated) == {(12, 23, 23)} and {s for r, s in seen if not r} == {PATCH}


@pytest.mark.parametrize("multilabel", [False, True])
def test_labels_stay_labels_under_every_augmentation(data_dir, multilabel):
    always = dict(p_rotate=1.0, p_scale=1.0, p_anisotropy=1.0, p_bias=1.0, p_blur=1.0, p_noise=1.0, p_swap=1.0, p_gamma=1.0)
    aug = Augmenter(PatchDatasetParams(**always), PATCH, (12, 23, 23), multilabel=multilabel)
    labels = torch.zeros((12, 23, 23), dtype=torch.long)
    labels[2:10, 4:12, 4:12] = 1
    labels[5:8, 10:20, 10:20] = 2
    mask = torch.stack([labels == 1, labels == 2]).to(torch.uint8) if multilabel else labels
    torch.manual_seed(0)
    for _ in range(5):
        image, out = aug(torch.randn(1, 12, 23, 23), mask, rotate=True)
        assert image.shape == (1, *PATCH) and out.shape == ((2, *PATCH) if multilabel else PATCH)
        assert set(out.unique().tolist()) <= ({0, 1} if multilabel else {0, 1, 2})


def test_params_refuse_reversed_ranges():
    with pytest.raises(ValueError, match="log_gamma"):
        PatchDatasetParams(log_gamma=(0.4, -0.35))


def test_crop_pad_reads_only_the_box_and_pads_outside():
    vol = np.arange(4 * 5 * 6).reshape(1, 4, 5, 6)
    out = crop_pad(vol, (-2, 3, 4), (4, 4, 4), channel_first=True)
    assert out.shape == (1, 4, 4, 4)
    assert (out[:, :2] == 0).all() and (out[:, 2:, 2:, 2:] == 0).all()
    assert np.array_equal(out[0, 2:, :2, :2], vol[0, :2, 3:5, 4:6])
    assert crop_pad(vol[0], (10, 10, 10), (2, 2, 2), channel_first=False).sum() == 0  # entirely outside
    two = np.stack([vol[0], vol[0]])
    out = crop_pad(two, (-1, 0, 0), (5, 5, 6), channel_first=True, value=np.array([-7, -9]))
    assert (out[0, 0] == -7).all() and (out[1, 0] == -9).all() and np.array_equal(out[:, 1:], two)

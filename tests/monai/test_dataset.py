"""monai-dataset over a tiny preprocessed folder: shapes, pos/neg sampling, determinism, multi-label."""

import numpy as np
import pytest
import torch

from biom3d.core.context import RunContext
from biom3d.core.errors import DataError
from biom3d.core.geometry import rotation_plane
from biom3d.monai.dataset import PatchDataset
from biom3d.monai.transforms import BG, FG, KEYS, PAD, RandPosNegWindowd, rotate_range, window
from tests.monai.helpers import write_preprocessed


def _data(registry, root, *, params=None, **ctx):
    context = RunContext(
        **{"num_classes": 2, "patch_size": (16, 16, 16), "data_dir": root, "seed": 7, "fold": 0, **ctx}
    )
    return registry.resolve("dataset", "monai-dataset").build(params or {}, context)


def test_items_have_biom3d_shapes_and_dtypes(registry, tmp_path):
    write_preprocessed(tmp_path)
    data = _data(registry, tmp_path)
    assert len(data.train_cases) == 2 and len(data.val_cases) == 1
    train = data.train_dataset(5)
    assert len(train) == 5
    item = train[0]
    assert set(item) == {"image", "mask"} and set(data.val_dataset(1)[0]) == {"image", "mask", "valid"}
    assert item["image"].shape == (1, 16, 16, 16) and item["image"].dtype == torch.float32
    assert item["mask"].shape == (16, 16, 16) and item["mask"].dtype == torch.int64
    assert type(item["image"]) is torch.Tensor  # not a MetaTensor
    batch = next(iter(torch.utils.data.DataLoader(data.val_dataset(2), batch_size=2)))
    assert batch["image"].shape == (2, 1, 16, 16, 16) and batch["mask"].shape == (2, 16, 16, 16)


def test_small_volumes_are_padded_and_multilabel_masks_are_float(registry, tmp_path):
    write_preprocessed(tmp_path, size=12, multilabel=True)
    data = _data(registry, tmp_path, multilabel=True)
    for item in (data.train_dataset(2)[0], data.val_dataset(1)[0]):
        assert item["image"].shape == (1, 16, 16, 16)
        assert item["mask"].shape == (2, 16, 16, 16) and item["mask"].dtype == torch.float32
        assert set(item["mask"].unique().tolist()) <= {0.0, 1.0}


@pytest.mark.parametrize(
    "params",
    [{"augment": False}, {"affine_prob": 1e-9, "noise_prob": 0, "smooth_prob": 0, "gamma_prob": 0}],
    ids=["patch-crop", "enlarged-window"],
)
def test_one_patch_in_three_is_centred_on_sparse_foreground(registry, tmp_path, params):
    write_preprocessed(tmp_path)
    data = _data(registry, tmp_path, patch_size=(8, 8, 8), params=params)
    assert data.crop == ((8, 8, 8) if "augment" in params else (14, 14, 14))  # core's aug_patch_size
    train = data.train_dataset(150)
    with_fg = np.mean([bool(train[i]["mask"].any()) for i in range(len(train))])
    assert 0.25 < with_fg < 0.5, with_fg  # 1/3 positive + a few random hits


def test_enlarged_window_reads_the_given_value_outside_the_volume():
    volume = np.arange(2 * 4 * 4 * 4).reshape(2, 4, 4, 4)
    out = window(volume, (-1, 2, 0), (3, 3, 4))
    assert out.shape == (2, 3, 3, 4)
    assert (out[:, 0] == 0).all() and (out[:, :, 2:] == 0).all()
    np.testing.assert_array_equal(out[:, 1:, :2], volume[:, :2, 2:4])
    assert not window(volume, (9, 0, 0), (2, 2, 2)).any()
    out = window(volume, (-1, 0, 0), (5, 4, 4), np.array([-5, -7]))  # one value per channel
    assert (out[0, 0] == -5).all() and (out[1, 0] == -7).all()
    np.testing.assert_array_equal(out[:, 1:], volume)


def test_padding_is_the_volumes_minimum_and_validation_marks_the_volume(registry, tmp_path):
    write_preprocessed(tmp_path, size=12)  # smaller than the 16^3 patch: padded at the end of each axis
    data = _data(registry, tmp_path, params={"augment": False})
    raw = np.load(tmp_path / "images" / "case0.npy")
    assert raw.min() < -2  # far from 0, the z-scored mean
    item = data.val_dataset(1)[0]
    valid = item["valid"]
    assert valid.shape == (1, 16, 16, 16) and valid.dtype == torch.bool
    assert int(valid.sum()) == 12**3 and bool(valid[0, :12, :12, :12].all())
    np.testing.assert_array_equal(item["image"][:, :12, :12, :12].numpy(), raw)
    assert (item["image"][~valid] == float(raw.min())).all() and not item["mask"][~valid[0]].any()
    train = data.train_dataset(3)
    for i in range(3):
        image = train[i]["image"]
        assert int((image == image.min()).sum()) == 16**3 - 12**3 + 1  # the padding, and the volume's own minimum


def test_volumes_as_large_as_the_patch_are_never_padded(registry, tmp_path, monkeypatch):
    write_preprocessed(tmp_path, size=16)
    monkeypatch.setattr(PatchDataset, "_pad_value", lambda self, case, image: pytest.fail(f"{case.name} was padded"))
    data = _data(registry, tmp_path, params={"augment": False})
    val, train = data.val_dataset(4), data.train_dataset(4)
    assert all(bool(val[i]["valid"].all()) for i in range(4))
    assert all(train[i]["image"].shape == (1, 16, 16, 16) for i in range(4))


def test_enlarged_window_pads_the_image_with_its_background_only_when_it_leaves_the_volume():
    image = np.random.default_rng(0).random((1, 4, 4, 4)) + 1
    mask = np.ones((1, 4, 4, 4), np.uint8)
    calls = []
    data = {"image": image, "mask": mask, FG: np.arange(64), BG: np.arange(64),
            PAD: lambda: calls.append(1) or np.array([-3.0])}
    out = RandPosNegWindowd(KEYS, patch=(4, 4, 4), window=(8, 8, 8), pos=1, neg=0)(data)
    assert int((out["image"] == -3).sum()) == 8**3 - 4**3 and int(out["mask"].sum()) == 4**3 and calls == [1]
    out = RandPosNegWindowd(KEYS, patch=(4, 4, 4), window=(4, 4, 4), pos=1, neg=0)(data)
    assert torch.equal(out["image"], torch.from_numpy(image)) and calls == [1]  # inside: never computed


def test_validation_items_are_deterministic(registry, tmp_path):
    write_preprocessed(tmp_path)
    val = _data(registry, tmp_path).val_dataset(4)
    first = [val[i] for i in range(4)]
    assert all(torch.equal(a["image"], val[i]["image"]) for i, a in enumerate(first))
    other = _data(registry, tmp_path).val_dataset(4)
    assert all(torch.equal(a["mask"], other[i]["mask"]) for i, a in enumerate(first))


def test_same_seed_same_items_and_new_draws_each_epoch(registry, tmp_path):
    write_preprocessed(tmp_path)
    a = _data(registry, tmp_path).train_dataset(4)
    b = _data(registry, tmp_path).train_dataset(4)
    first = [a[i]["image"] for i in range(4)]
    assert all(torch.equal(x, b[i]["image"]) for i, x in enumerate(first))
    assert not torch.equal(a[0]["image"], first[0])  # the next epoch draws index 0 again, differently
    c = _data(registry, tmp_path, seed=8).train_dataset(4)
    assert not torch.equal(c[0]["image"], first[0])


def test_workers_are_seeded_from_torch(registry, tmp_path):
    write_preprocessed(tmp_path)
    train = _data(registry, tmp_path).train_dataset(4)

    def first_batch():
        torch.manual_seed(0)
        loader = torch.utils.data.DataLoader(train, batch_size=2, num_workers=2)
        return [batch["image"] for batch in loader]

    one, two = first_batch(), first_batch()
    assert all(torch.equal(x, y) for x, y in zip(one, two, strict=True))


def test_missing_inputs_are_data_errors(registry, tmp_path):
    with pytest.raises(DataError, match="folds"):
        _data(registry, tmp_path)
    write_preprocessed(tmp_path)
    (tmp_path / "masks" / "case1.npy").unlink()
    with pytest.raises(DataError, match="case1.npy"):
        _data(registry, tmp_path)
    with pytest.raises(DataError, match="patch size"):
        _data(registry, tmp_path, patch_size=None)


def test_rotations_stay_within_core_rotation_plane():
    assert rotate_range(rotation_plane((8, 64, 64)), 30, 3) == pytest.approx((0.5236, 0.0, 0.0), abs=1e-4)  # about z
    assert rotate_range(rotation_plane((64, 64, 8)), 30, 3) == pytest.approx((0.0, 0.0, 0.5236), abs=1e-4)
    assert rotate_range(rotation_plane((32, 32, 32)), 30, 3) == pytest.approx((0.5236,) * 3, abs=1e-4)

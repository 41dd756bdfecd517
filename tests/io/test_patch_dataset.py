import numpy as np
import pytest
import torch

from biom3d.core.context import RunContext
from biom3d.core.folds import write_folds
from biom3d.io.dataset_params import PatchDatasetParams
from biom3d.io.datasets import PatchData, crop_pad

PATCH = (8, 16, 16)


def _write(root, name, shape, fg_box):
    image = np.random.default_rng(len(name)).normal(size=(1, *shape)).astype(np.float32)
    mask = np.zeros(shape, np.uint8)
    mask[fg_box] = 1
    for sub, arr in (("images", image), ("masks", mask)):
        (root / sub).mkdir(parents=True, exist_ok=True)
        np.save(root / sub / f"{name}.npy", arr)
    (root / "fg").mkdir(exist_ok=True)
    np.savez(root / "fg" / f"{name}.npz", **{"1": np.argwhere(mask == 1).astype(np.int32)})


@pytest.fixture
def data_dir(tmp_path):
    _write(tmp_path, "big", (24, 48, 48), (slice(2, 4), slice(3, 6), slice(40, 44)))  # sparse foreground
    _write(tmp_path, "small", (5, 10, 12), (slice(1, 3), slice(2, 5), slice(2, 5)))  # smaller than the patch
    _write(tmp_path, "val", (12, 20, 20), (slice(4, 8), slice(4, 8), slice(4, 8)))
    write_folds(tmp_path / "folds.csv", {"big.npy": 1, "small.npy": 1, "val.npy": 0})
    return tmp_path


def _data(data_dir, **params):
    ctx = RunContext(num_classes=1, patch_size=PATCH, aug_patch_size=(12, 23, 23), data_dir=data_dir,
                     folds_path=data_dir / "folds.csv", fold=0, seed=5)
    return PatchData(PatchDatasetParams(**params), ctx)


def test_items_have_the_patch_shape_and_types(data_dir):
    data = _data(data_dir)
    ds = data.train_dataset(12)
    assert len(ds) == 12 and data.train_names == ["big.npy", "small.npy"] and data.val_names == ["val.npy"]
    for i in range(12):
        item = ds[i]
        assert item["image"].shape == (1, *PATCH) and item["image"].dtype == torch.float32
        assert item["mask"].shape == PATCH and item["mask"].dtype == torch.int64


def test_one_patch_in_three_is_centred_on_foreground(data_dir):
    ds = _data(data_dir, augment=False).train_dataset(300)
    torch.manual_seed(0)
    hits = [bool(ds[i]["mask"].any()) for i in range(300)]
    on_fg = [hits[i] for i in range(300) if (i + 1) % 3 == 0]
    assert all(on_fg)  # every third patch is centred on a foreground voxel
    assert sum(hits) / 300 >= 1 / 3


def test_validation_is_deterministic_and_unaugmented(data_dir):
    ds = _data(data_dir).val_dataset(6)
    a, b = ds[4], ds[4]
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
    raw = np.load(data_dir / "images" / "val.npy")
    window = a["image"][0].numpy()
    # an unaugmented crop: its voxels are the volume's own values (or zero padding)
    assert np.isin(window[window != 0], raw).all()


def test_same_seed_same_augmented_items(data_dir):
    ds = _data(data_dir, p_affine=1.0).train_dataset(4)
    torch.manual_seed(11)
    first = [ds[i]["image"] for i in range(4)]
    torch.manual_seed(11)
    second = [ds[i]["image"] for i in range(4)]
    assert all(torch.equal(x, y) for x, y in zip(first, second, strict=True))


def test_crop_pad_reads_only_the_box_and_pads_outside():
    vol = np.arange(4 * 5 * 6).reshape(1, 4, 5, 6)
    out = crop_pad(vol, (-2, 3, 4), (4, 4, 4), channel_first=True)
    assert out.shape == (1, 4, 4, 4)
    assert (out[:, :2] == 0).all() and (out[:, 2:, 2:, 2:] == 0).all()
    assert np.array_equal(out[0, 2:, :2, :2], vol[0, :2, 3:5, 4:6])
    assert crop_pad(vol[0], (10, 10, 10), (2, 2, 2), channel_first=False).sum() == 0  # entirely outside

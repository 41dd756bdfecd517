"""io/batch-augment: the batched on-device augmenter draws what io/patch-dataset's TorchIO pipeline draws (the
fractions of flipped and otherwise augmented samples, the ranges of rotations and scales fitted on marker
volumes), each op computes what its TorchIO transform computes, labels stay exact and aligned, seeds reproduce,
validation is unaugmented, and a config choosing it trains through the Builder."""

from __future__ import annotations

import inspect
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from biom3d.core.context import RunContext
from biom3d.core.folds import write_folds
from biom3d.core.geometry import aug_patch_size
from biom3d.io import batch_ops
from biom3d.io.batch_augment import BatchAugmentData, BatchAugmenter, rotation_matrices
from biom3d.io.batch_augment_params import BatchAugmentParams
from biom3d.io.dataset_params import PatchDatasetParams
from biom3d.io.datasets import PatchData

OFF = {f"p_{name}": 0.0 for name in ("rotate", "scale", "anisotropy", "flip", "bias", "blur", "noise", "swap", "gamma")}
# four non-coplanar markers, ~7 voxels from the patch centre: inside a 32^3 patch under +/-45 degrees and x1.4
MARKERS = ((7.0, 0.0, 0.0), (0.0, 7.0, 0.0), (0.0, 0.0, 7.0), (-4.0, -4.0, -4.0))


def _augmenter(patch, seed=0, multilabel=False, **params) -> BatchAugmenter:
    return BatchAugmenter(BatchAugmentParams(**{**OFF, **params}), patch, multilabel=multilabel, seed=seed)


def _within_binomial(count: int, n: int, p: float, sds: float = 4.5) -> bool:
    """``count`` successes of ``n`` draws at ``p``: within ``sds`` standard deviations (false alarm < 1e-5)."""
    return abs(count - n * p) <= sds * math.sqrt(n * p * (1 - p))


def _uniform_ks(values: torch.Tensor, low: float, high: float) -> float:
    """Kolmogorov-Smirnov distance of ``values`` from U(low, high)."""
    x = ((values.double().flatten().sort().values - low) / (high - low)).clamp(0, 1)
    n = len(x)
    ranks = torch.arange(1, n + 1, dtype=torch.float64)
    return float(torch.maximum(ranks / n - x, x - (ranks - 1) / n).max())


def _ks_bound(n: int) -> float:
    return 1.95 / math.sqrt(n)  # alpha = 0.001


# -- drawing: fractions and ranges ---------------------------------------------------------------------------------
def test_each_axis_flips_with_the_configured_probability_image_and_labels_alike():
    patch, n = (4, 6, 8), 600
    volume = torch.arange(math.prod(patch), dtype=torch.float32).view(1, 1, *patch)
    batch = {"image": volume.repeat(n, 1, 1, 1, 1), "mask": (volume[:, 0] % 3).to(torch.uint8).repeat(n, 1, 1, 1)}
    out = _augmenter(patch, p_flip=0.3)(batch)
    first = out["image"][:, 0, 0, 0, 0].long()  # the source voxel now at the origin tells which axes flipped
    source = [first // (patch[1] * patch[2]), first // patch[2] % patch[1], first % patch[2]]
    flipped = torch.stack([s > 0 for s in source], 1)
    for axis in range(3):
        assert _within_binomial(int(flipped[:, axis].sum()), n, 0.3), (axis, int(flipped[:, axis].sum()))
    for b in range(20):
        dims = [a for a in range(3) if flipped[b, a]]
        assert torch.equal(out["image"][b, 0], volume[0, 0].flip(dims))  # a flip, nothing else
    assert torch.equal(out["mask"], out["image"][:, 0].long() % 3)  # labels flipped with their image


def _markers(crop, patch, offsets=MARKERS, sigma=1.2) -> torch.Tensor:
    """(1, K, *crop): channel k a Gaussian blob at the patch centre + ``offsets[k]`` (voxels)."""
    centre = [(c - p) // 2 + (p - 1) / 2 for c, p in zip(crop, patch, strict=True)]
    grids = torch.meshgrid(*[torch.arange(c, dtype=torch.float64) for c in crop], indexing="ij")
    blobs = [torch.exp(-sum((g - c - o) ** 2 for g, c, o in zip(grids, centre, u, strict=True)) / (2 * sigma**2))
             for u in offsets]
    return torch.stack(blobs).float()[None]


def _centroids(out: torch.Tensor) -> torch.Tensor:
    """(B, K, 3) intensity centroid of each channel, in voxels from the patch centre."""
    grids = torch.meshgrid(*[torch.arange(p, dtype=torch.float64) - (p - 1) / 2 for p in out.shape[2:]], indexing="ij")
    weight = out.double().clamp(min=0)
    return torch.stack([(weight * g).sum((2, 3, 4)) / weight.sum((2, 3, 4)) for g in grids], -1)


def _fitted_maps(out: torch.Tensor, offsets=MARKERS, axes=(0, 1, 2)) -> torch.Tensor:
    """(B, A, A) linear map taking each marker's offset to its offset in the output, on ``axes``."""
    found = _centroids(out)[..., list(axes)]
    source = torch.tensor(offsets, dtype=torch.float64)[:, list(axes)].expand(len(out), -1, -1)
    return torch.linalg.lstsq(source, found).solution.transpose(1, 2)


def _marker_batch(patch, n, crop=None):
    crop = crop or patch
    return {"image": _markers(crop, patch).repeat(n, 1, 1, 1, 1), "mask": torch.zeros(n, *crop, dtype=torch.uint8)}


def test_rotations_span_the_configured_range_about_every_axis_of_an_isotropic_patch():
    patch, n = (32, 32, 32), 48
    crop = aug_patch_size(patch)
    out = _augmenter(patch, seed=1, p_rotate=1.0)(_marker_batch(patch, n, crop))["image"]
    u, _, v = torch.linalg.svd(_fitted_maps(out))
    rotation = (u @ v).transpose(1, 2)  # output = M^-1 (input): M, the nearest rotation to the fit
    angles = torch.stack([torch.atan2(-rotation[:, 1, 2], rotation[:, 2, 2]), torch.asin(-rotation[:, 0, 2]),
                          torch.atan2(-rotation[:, 0, 1], rotation[:, 0, 0])], 1).rad2deg()
    assert angles.abs().max() <= 45 + 2
    for axis in range(3):
        assert _uniform_ks(angles[:, axis], -45, 45) < _ks_bound(n), axis
    assert torch.allclose(rotation_matrices(angles.deg2rad()), rotation, atol=1e-6)  # the decomposition is exact


def test_a_thin_patch_rotates_about_its_smallest_axis_only_over_the_full_turn():
    patch, n = (6, 32, 32), 60
    crop = aug_patch_size(patch)
    assert crop == (6, 45, 45)
    offsets = ((0.0, 7.0, 0.0), (0.0, 0.0, 7.0), (0.0, -5.0, -5.0))
    batch = {"image": _markers(crop, patch, offsets).repeat(n, 1, 1, 1, 1),
             "mask": torch.zeros(n, *crop, dtype=torch.uint8)}
    out = _augmenter(patch, seed=2, p_rotate=1.0)(batch)["image"]
    assert _centroids(out)[..., 0].abs().max() < 0.05  # never tilted out of its plane
    plane = _fitted_maps(out, offsets, axes=(1, 2))
    angles = torch.atan2(plane[:, 1, 0], plane[:, 0, 0]).rad2deg()
    assert _uniform_ks(angles, -180, 180) < _ks_bound(n)


def test_scales_span_the_configured_range_per_axis():
    patch, n = (32, 32, 32), 48
    out = _augmenter(patch, seed=3, p_scale=1.0, scales=(0.8, 1.25))(_marker_batch(patch, n))["image"]
    fitted = _fitted_maps(out)
    scales = fitted.diagonal(dim1=1, dim2=2)
    assert (fitted - torch.diag_embed(scales)).abs().max() < 0.02  # no shear, no rotation
    assert scales.min() > 0.8 - 0.02 and scales.max() < 1.25 + 0.02
    for axis in range(3):
        assert _uniform_ks(scales[:, axis], 0.8, 1.25) < _ks_bound(n), axis


@pytest.mark.parametrize("op", ["rotate", "scale", "anisotropy", "bias", "blur", "noise", "swap", "gamma"])
def test_each_transform_touches_the_configured_fraction_of_samples(op):
    patch, n, p = (8, 8, 8), 300, 0.3
    crop = aug_patch_size(patch) if op == "rotate" else patch
    gen = torch.Generator().manual_seed(0)
    batch = {"image": torch.randn(n, 1, *crop, generator=gen), "mask": torch.zeros(n, *crop, dtype=torch.uint8)}
    out = _augmenter(patch, seed=4, **{f"p_{op}": p})(batch)["image"]
    low = [(c - s) // 2 for c, s in zip(crop, patch, strict=True)]
    plain = batch["image"][:, :, low[0]:low[0] + 8, low[1]:low[1] + 8, low[2]:low[2] + 8]
    changed = int((out != plain).flatten(1).any(1).sum())
    assert _within_binomial(changed, n, p), changed


# -- each op is its TorchIO transform -----------------------------------------------------------------------------
SHAPE = (7, 10, 12)


def test_bias_field_is_torchios_polynomial():
    from torchio.transforms.augmentation.intensity.random_bias_field import BiasField

    coefficients = torch.linspace(-0.2, 0.2, batch_ops.bias_terms(3), dtype=torch.float64)
    expected = BiasField.generate_bias_field(torch.zeros(1, *SHAPE), 3, coefficients.tolist())
    basis = batch_ops.bias_basis(SHAPE, 3)
    ours = torch.exp((coefficients.float() @ basis.view(len(basis), -1)).view(SHAPE))
    assert torch.allclose(ours, torch.from_numpy(expected), atol=1e-5)


def test_blur_is_scipys_gaussian_filter():
    from scipy.ndimage import gaussian_filter

    x = torch.randn(2, 1, *SHAPE, dtype=torch.float64)
    stds = torch.tensor([[0.5, 0.8, 1.0], [0.9, 0.6, 0.7]], dtype=torch.float64)
    out = x
    for axis in range(3):
        out = batch_ops.along_axis(out, batch_ops.gaussian_matrices(stds[:, axis], SHAPE[axis]), axis)
    for b in range(2):
        assert np.allclose(out[b, 0].numpy(), gaussian_filter(x[b, 0].numpy(), stds[b].tolist()), atol=1e-10)


@pytest.mark.parametrize(("axis", "factor"), [(0, 1.3), (1, 1.5), (2, 1.12)])
def test_anisotropy_is_torchios_down_and_up_sampling(axis, factor):
    import torchio as tio

    x = torch.randn(1, 1, *SHAPE)
    expected = tio.RandomAnisotropy(axes=(axis,), downsampling=(factor, factor))(tio.ScalarImage(tensor=x[0])).data
    ours = batch_ops.along_axis(x, batch_ops.anisotropy_matrices(torch.tensor([factor]), SHAPE[axis]), axis)[0]
    filled = expected == 0  # TorchIO zero-fills a slab past the downsampled extent; we extend the edge there
    assert torch.allclose(ours[~filled], expected[~filled], atol=1e-5)
    assert filled.sum() <= x[0].numel() // SHAPE[axis]


def test_swap_and_gamma_are_torchios():
    import torchio as tio
    from torchio.transforms.augmentation.intensity.random_swap import Swap

    x = torch.randn(1, 2, *SHAPE)
    # disjoint pairs: where blocks overlap, TorchIO copies a view onto itself and the result depends on the copy
    # order; ours reads both blocks before writing
    starts = torch.tensor([[[[0, 1, 2], [3, 4, 5]], [[4, 6, 0], [0, 0, 7]], [[4, 0, 7], [0, 6, 0]]]])
    locations = [tuple(map(tuple, pair.tolist())) for pair in starts[0]]
    expected = Swap(patch_size=(3, 4, 5), locations=locations)(tio.ScalarImage(tensor=x[0])).data
    assert torch.equal(batch_ops.swap_blocks(x.clone(), starts, (3, 4, 5))[0], expected)
    gamma = torch.tensor([[0.7, 1.4]])
    expected = tio.Gamma(gamma=(0.7, 1.4))(tio.ScalarImage(tensor=x[0])).data
    assert torch.allclose(batch_ops.signed_gamma(x.clone(), gamma)[0], expected, atol=1e-6)


def test_the_defaults_are_io_patch_datasets():
    ours = BatchAugmentParams().model_dump()
    assert ours.pop("run_on") == "auto" and ours == PatchDatasetParams().model_dump()  # only where they run is added


# -- labels ---------------------------------------------------------------------------------------------------------
def _label_crop(crop):
    labels = torch.zeros(crop, dtype=torch.uint8)
    labels[4:14, 6:20, 5:17] = 1
    labels[9:18, 14:26, 12:24] = 2
    return labels


@pytest.mark.parametrize("multilabel", [False, True])
def test_labels_stay_in_their_set_and_aligned_with_their_image(multilabel):
    patch, n = (16, 16, 16), 12
    crop = aug_patch_size(patch)
    labels = _label_crop(crop)
    onehot = torch.stack([labels == 1, labels == 2]).to(torch.uint8)
    mask = onehot if multilabel else labels
    foreground = (labels > 0).float()  # the image is the label map: trilinear where the labels are nearest
    batch = {"image": foreground[None, None].repeat(n, 1, 1, 1, 1), "mask": mask[None].repeat(n, *[1] * mask.ndim)}
    spatial = dict(p_rotate=1.0, p_scale=0.5, p_flip=0.5)
    out = _augmenter(patch, seed=5, multilabel=multilabel, **spatial)(batch)
    image, mask = out["image"][:, 0], out["mask"]
    assert mask.dtype == (torch.float32 if multilabel else torch.int64)
    assert mask.shape == ((n, 2, *patch) if multilabel else (n, *patch))
    assert set(mask.unique().tolist()) == ({0, 1} if multilabel else {0, 1, 2})
    fg = mask.amax(1) > 0 if multilabel else mask > 0
    assert (fg[image > 1 - 1e-5]).all() and not fg[image < 1e-5].any()  # inside / outside agree with the image
    assert fg[image > 1 - 1e-5].sum() > 0.2 * fg.sum()
    noisy = _augmenter(patch, seed=5, multilabel=multilabel, **spatial, **{k: 1.0 for k in (
        "p_anisotropy", "p_bias", "p_blur", "p_noise", "p_swap", "p_gamma")})(batch)
    assert torch.equal(noisy["mask"], mask)  # intensity transforms leave the labels alone


# -- seeds -------------------------------------------------------------------------------------------------------------
def test_same_seed_same_batches_different_seed_different():
    patch = (8, 8, 8)
    crop = aug_patch_size(patch)
    gen = torch.Generator().manual_seed(0)
    batch = {"image": torch.randn(6, 1, *crop, generator=gen), "mask": _label_crop(crop)[:, :, :].repeat(6, 1, 1, 1)}
    params = {k: 0.5 for k in OFF}

    def two_batches(seed):
        aug = _augmenter(patch, seed=seed, **params)
        return [aug(batch) for _ in range(2)]

    first, again, other = two_batches(7), two_batches(7), two_batches(8)
    for a, b in zip(first, again, strict=True):
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
    assert not torch.equal(first[0]["image"], other[0]["image"])
    assert not torch.equal(first[0]["image"], first[1]["image"])  # each batch its own draw


# -- the component -----------------------------------------------------------------------------------------------------
PATCH = (8, 16, 16)


@pytest.fixture
def data_dir(tmp_path):
    rng = np.random.default_rng(0)
    for name, shape in (("a", (20, 40, 40)), ("b", (12, 30, 34)), ("v", (10, 20, 20))):
        mask = np.zeros(shape, np.uint8)
        mask[2:6, 5:12, 5:12] = 1
        for sub, arr in (("images", rng.normal(size=(1, *shape)).astype(np.float32)), ("masks", mask)):
            (tmp_path / sub).mkdir(exist_ok=True)
            np.save(tmp_path / sub / f"{name}.npy", arr)
        (tmp_path / "fg").mkdir(exist_ok=True)
        np.savez(tmp_path / "fg" / f"{name}.npz", **{"1": np.argwhere(mask == 1).astype(np.int32)})
    write_folds(tmp_path / "folds.csv", {"a.npy": 1, "b.npy": 1, "v.npy": 0})
    return tmp_path


def _ctx(data_dir, **changes):
    return RunContext(num_classes=1, patch_size=PATCH, aug_patch_size=aug_patch_size(PATCH), data_dir=data_dir,
                      folds_path=data_dir / "folds.csv", batch_size=2, seed=3, **changes)


def _worker_batches(data, *, seed: int) -> list[dict]:
    """A training epoch of 4 batches of 4 through the trainer's own loader: 2 workers, the dataset's collate."""
    from biom3d.core.builtins.trainer import SegTrainer

    trainer = SegTrainer.__new__(SegTrainer)  # only _loader's inputs
    trainer.train_cfg = SimpleNamespace(seed=seed, workers=2, batch_size=4)
    trainer.world, trainer.batch_size, trainer.device = SimpleNamespace(rank=0, distributed=False), 4, torch.device("cpu")
    return list(trainer._loader(data.train_dataset(16), shuffle=False))


def test_workers_only_crop_and_on_device_makes_training_batches(data_dir):
    data = BatchAugmentData(BatchAugmentParams(), _ctx(data_dir))
    ds = data.train_dataset(400)
    torch.manual_seed(0)
    items = [ds[i] for i in range(400)]
    crop = aug_patch_size(PATCH)
    rotated = [bool(it["rotate"]) for it in items]
    assert abs(sum(rotated) / len(items) - 0.2) < 0.06  # p_rotate: only those carry the enlarged crop
    for it, rotate in zip(items, rotated, strict=True):
        size = crop if rotate else PATCH
        assert it["image"].shape == (1, *size) and it["mask"].shape == size and it["mask"].dtype == torch.uint8
    assert all(bool(items[i]["mask"].any()) for i in range(1, 400, 2))  # the foreground rule of io/patch-dataset
    mixed = next(i for i in range(0, 400, 8) if 0 < sum(rotated[i:i + 8]) < 8)
    batch = ds.collate(items[mixed:mixed + 8])
    r = sum(rotated[mixed:mixed + 8])
    assert batch["crop_image"].shape == (8 - r, 1, *PATCH) and batch["rot_image"].shape == (r, 1, *crop)
    assert batch["crop_mask"].shape == (8 - r, *PATCH) and batch["rot_mask"].shape == (r, *crop)
    with pytest.raises(KeyError, match="finished by its on_device"):  # a trainer that never called the hook
        batch["image"]
    out = data.on_device(batch)
    assert out["image"].shape == (8, 1, *PATCH) and out["image"].dtype == torch.float32
    assert out["mask"].shape == (8, *PATCH) and out["mask"].dtype == torch.int64
    still = ds.collate([it for it in items if not it["rotate"]][:2])
    assert still["rot_image"].shape == (0, 1, *crop) and still["rot_mask"].dtype == torch.uint8  # always 4 keys
    assert data.on_device(still)["image"].shape == (2, 1, *PATCH)
    plain = BatchAugmentData(BatchAugmentParams(p_rotate=0.0), _ctx(data_dir)).train_dataset(20)
    assert all(plain[i]["image"].shape == (1, *PATCH) for i in range(20))  # no rotation: no enlarged crop
    off = BatchAugmentData(BatchAugmentParams(augment=False), _ctx(data_dir))
    dataset = off.train_dataset(2)
    items = [dataset[i] for i in range(2)]
    batch = dataset.collate(items)  # an ordinary training batch, the crops as read
    assert torch.equal(batch["image"], torch.stack([it["image"] for it in items]))
    assert batch["mask"].dtype == torch.int64 and torch.equal(batch["mask"], torch.stack([it["mask"] for it in items]).long())
    assert off.on_device(batch) is batch


def test_on_device_draws_from_the_training_process_rng(data_dir):
    """So that a resumed run, whose RNG the trainer restores, goes on with the batches the interrupted one would
    have drawn (numbered batches started again at the first one)."""
    data = BatchAugmentData(BatchAugmentParams(run_on="device"), _ctx(data_dir))
    ds = data.train_dataset(8)
    torch.manual_seed(0)
    batch = ds.collate([ds[i] for i in range(8)])
    torch.manual_seed(7)
    first, second = data.on_device(batch), data.on_device(batch)
    torch.manual_seed(7)  # as a resume restores it
    again = data.on_device(batch)
    assert torch.equal(again["image"], first["image"]) and torch.equal(again["mask"], first["mask"])
    assert not torch.equal(second["image"], first["image"])


def test_the_loaders_workers_ship_the_two_crop_sizes_apart(data_dir):
    """Through a real DataLoader with workers, as the trainer builds it (its collate_fn is the dataset's)."""
    data = BatchAugmentData(BatchAugmentParams(p_rotate=0.5, run_on="device"), _ctx(data_dir, workers=2))
    assert not data.in_workers
    batches = _worker_batches(data, seed=0)
    sizes = [(len(b["crop_image"]), len(b["rot_image"])) for b in batches]
    assert len(batches) == 4 and all(s + r == 4 for s, r in sizes)
    assert 0 < sum(r for _, r in sizes) < 16  # both sizes came through
    assert all(b["crop_image"].shape[2:] == PATCH and b["rot_image"].shape[2:] == aug_patch_size(PATCH) for b in batches)
    assert all(data.on_device(b)["image"].shape == (4, 1, *PATCH) for b in batches)


def test_on_a_cpu_the_workers_augment_their_batches_seeded_from_the_run(data_dir):
    """run_on auto, training on a CPU with workers: each worker augments the batch it collated (the training
    process is busy with the network there); on_device only makes the labels int64 (they travel as uint8)."""
    params = BatchAugmentParams(p_rotate=0.5, p_scale=0.5, p_flip=0.5, p_noise=0.5, p_gamma=0.5)
    data = BatchAugmentData(params, _ctx(data_dir, workers=2))
    assert data.in_workers and not BatchAugmentData(params, _ctx(data_dir, workers=0)).in_workers
    assert not BatchAugmentData(params, _ctx(data_dir, workers=2, device="cuda:0")).in_workers
    first, again, other = (_worker_batches(data, seed=s) for s in (5, 5, 6))
    raw = torch.from_numpy(np.concatenate([np.load(data_dir / "images" / f"{n}.npy").ravel() for n in "ab"]))
    for batch in first:
        assert set(batch) == {"image", "labels"} and batch["image"].shape == (4, 1, *PATCH)
        assert batch["labels"].shape == (4, *PATCH) and batch["labels"].dtype == torch.uint8  # an eighth of int64
        assert set(batch["labels"].unique().tolist()) <= {0, 1}
        with pytest.raises(KeyError, match="finished by its on_device"):  # a trainer that never called the hook
            batch["mask"]
        out = data.on_device(batch)
        assert out["mask"].dtype == torch.int64 and torch.equal(out["mask"], batch["labels"].long())
        assert torch.equal(out["image"], batch["image"])
    augmented = [b["image"] for b in first]
    assert not all(torch.isin(x, raw).all() for x in augmented)  # augmented values, not the volumes' own
    assert all(torch.equal(a["image"], b["image"]) for a, b in zip(first, again, strict=True))  # the run's seed
    assert not torch.equal(first[0]["image"], other[0]["image"])
    assert not torch.equal(first[0]["image"], first[1]["image"])


def test_validation_is_io_patch_datasets_unaugmented(data_dir):
    ours = BatchAugmentData(BatchAugmentParams(), _ctx(data_dir)).val_dataset(4)
    reference = PatchData(PatchDatasetParams(), _ctx(data_dir)).val_dataset(4)
    raw = np.load(data_dir / "images" / "v.npy")
    for i in range(4):
        item, expected = ours[i], reference[i]
        assert set(item) == {"image", "mask", "valid"} and item["image"].shape == (1, *PATCH)
        assert all(torch.equal(item[k], expected[k]) for k in item)
        assert np.isin(item["image"][item["valid"]].numpy(), raw).all()  # the volume's own values


def test_a_config_choosing_it_trains_through_the_builder(tmp_path, monkeypatch):
    from biom3d.core.builder import Builder
    from biom3d.core.builtins.trainer import SegTrainer
    from biom3d.core.stages.preprocess import preprocess_dataset
    from tests.e2e.conftest import TINY, make_dataset

    assert "on_device" in inspect.getsource(SegTrainer._train_epoch)  # the trainer's hook
    root = make_dataset(tmp_path / "data", n_train=3, n_test=0)
    prepared = preprocess_dataset(root / "train" / "images", root / "train" / "masks", tmp_path / "prep",
                                  num_classes=1, workers=0, progress=False)
    calls = []
    original = BatchAugmentData.on_device

    def spy(self, batch):
        out = original(self, batch)
        calls.append((tuple(batch["rot_image"].shape), tuple(out["image"].shape), out["mask"].dtype))
        return out

    monkeypatch.setattr(BatchAugmentData, "on_device", spy)
    overrides = {**TINY, "train.epochs": 1, "train.iters_per_epoch": 3, "dataset": {"name": "io/batch-augment"}}
    result = Builder(prepared.config_path, overrides=overrides).train(runs_dir=tmp_path / "runs")
    patch = tuple(Builder(prepared.config_path).context.patch_size)
    assert len(result.history) == 1 and math.isfinite(result.history[0]["train_loss"])
    assert "val_loss" in result.history[0]
    assert len(calls) == 3  # training batches only: validation is never augmented
    assert all(out == (2, 1, *patch) and dtype == torch.int64 for _, out, dtype in calls)
    assert all(rot[2:] == aug_patch_size(patch) for rot, _, _ in calls)  # the enlarged crops reached on_device
    assert (result.run_dir / "checkpoints" / "last.pt").exists()
    assert "io/batch-augment" in (result.run_dir / "config.yaml").read_text(encoding="utf-8")


def test_the_batched_and_the_per_sample_resampling_agree():
    """The GPU's path (one grid_sample on the gathered sub-batch) and the CPU's (each sample in place, through
    grid_sample's 2D kernel), both on the CPU here: the same values to float32 rounding, the same labels."""
    patch = (12, 12, 12)
    crop = aug_patch_size(patch)
    gen = torch.Generator().manual_seed(1)
    image = torch.randn(4, 2, *crop, generator=gen)
    labels = _label_crop(crop)[None, None].repeat(4, 1, 1, 1, 1)
    samples = torch.tensor([0, 2, 3])
    matrix = rotation_matrices(torch.tensor([[0.3, -0.2, 0.5], [0.0, 0.0, 0.0], [1.0, 0.4, -0.7]], dtype=torch.float64))
    matrix[2] = matrix[2] @ torch.diag(torch.tensor([2.0, 1.0, 0.7], dtype=torch.float64))  # zooms out past the crop
    centre = [(c - p) // 2 + (p - 1) / 2 for c, p in zip(crop, patch, strict=True)]
    outs = []
    for per_sample in (True, False):
        out = (torch.zeros(4, 2, *patch), torch.zeros(4, 1, *patch, dtype=torch.int64))
        batch_ops.affine_resample(image, labels, samples, matrix, centre, *out, per_sample=per_sample)
        outs.append(out)
    assert torch.allclose(outs[0][0], outs[1][0], atol=1e-4) and torch.equal(outs[0][1], outs[1][1])
    assert not outs[0][0][1].any()  # samples not asked for are left alone
    assert batch_ops._leaves(matrix.float(), patch, centre, crop).tolist() == [False, False, True]
    floor = image[3].amin(dim=(1, 2, 3)).view(2, 1, 1, 1)
    padded = outs[0][0][3] == floor  # outside the crop: the image's per-channel minimum, label 0
    assert padded.all(0).sum() > 20 and not outs[0][1][3, 0][padded[0]].any()
    zero_fill = torch.tensor([False, False, False, True])  # pad: zero, as the original's rotations pad
    for per_sample in (True, False):
        out = (torch.zeros(4, 2, *patch), torch.zeros(4, 1, *patch, dtype=torch.int64))
        batch_ops.affine_resample(image, labels, samples, matrix, centre, *out, per_sample=per_sample,
                                  zero_fill=zero_fill)
        assert (out[0][3][:, padded[0]] == 0).all()
        assert torch.allclose(out[0][3][:, ~padded[0]], outs[0][0][3][:, ~padded[0]], atol=1e-4)
        assert torch.allclose(out[0][2], outs[0][0][2], atol=1e-4)  # an item not marked keeps the minimum


@pytest.mark.parametrize("shape", [(2, 23, 17, 30), (1, 1, 8, 6), (1, 2, 3, 4), (1, 5, 1, 7), (2, 4, 6, 1),
                                   (1, 40, 40, 40), (1, 90, 6, 90)])
def test_planar_trilinear_is_grid_samples_3d_interpolation(shape):
    """The CPU's rotations: trilinear through grid_sample's 2D kernel on a mosaic of the slices, border padding
    included (points up to 1.5 voxels outside), thin and single-slice volumes too."""
    import torch.nn.functional as F

    gen = torch.Generator().manual_seed(sum(shape))
    volume = torch.randn(*shape, generator=gen)
    points = torch.rand(3, 5000, generator=gen, dtype=torch.float64) * (torch.tensor(shape[1:]).view(3, 1) + 2) - 1.5
    grid = (points.float().flip(0).T * 2 + 1) / torch.tensor(shape[1:][::-1]) - 1
    expected = F.grid_sample(volume[None], grid.view(1, -1, 1, 1, 3), padding_mode="border", align_corners=False)
    ours = batch_ops.planar_trilinear(volume, points.float())
    assert ours.shape == (shape[0], 5000)
    assert torch.allclose(ours, expected.view(shape[0], -1), atol=1e-4)


def test_on_a_gpu_scaled_samples_join_the_rotated_ones_grid_to_the_same_result(monkeypatch):
    """The GPU's choice (scaled-only samples in the batched grid_sample, with an identity rotation), run on the CPU:
    the same batch as the CPU's separable scaling."""
    import functools

    patch = (12, 12, 12)
    crop = aug_patch_size(patch)
    gen = torch.Generator().manual_seed(5)
    batch = {"image": torch.randn(16, 2, *crop, generator=gen), "mask": _label_crop(crop)[None].repeat(16, 1, 1, 1)}
    outs = []
    resample = batch_ops.resample
    for batched in (False, True):
        monkeypatch.setattr(batch_ops, "resample", functools.partial(resample, batched=batched))
        outs.append(_augmenter(patch, seed=6, p_rotate=0.5, p_scale=0.8, p_flip=0.5)(batch))
    assert torch.allclose(outs[0]["image"], outs[1]["image"], atol=1e-4)
    assert torch.equal(outs[0]["mask"], outs[1]["mask"]) and outs[0]["mask"].any()
    low = [(c - q) // 2 for c, q in zip(crop, patch, strict=True)]
    centre = batch["image"][:, :, low[0]:low[0] + 12, low[1]:low[1] + 12, low[2]:low[2] + 12]
    assert (outs[0]["image"] != centre).flatten(1).any(1).sum() >= 8  # most samples moved


def test_scalings_resample_separably_to_the_grids_values():
    """A scaling or flip (a diagonal map) takes three 1D linear maps, not a grid: the same image values as
    affine_resample's grid_sample and the same labels, zooming in or out past the crop."""
    patch, crop = (10, 12, 14), (14, 16, 20)
    gen = torch.Generator().manual_seed(4)
    image = torch.randn(3, 2, *crop, generator=gen)
    labels = _label_crop(crop)[None, None].repeat(3, 1, 1, 1, 1)
    factors = torch.tensor([[1 / 1.4, -1.0, 1.3], [1.9, 1 / 0.9, -0.8], [-1.0, 1.0, 1.0]], dtype=torch.float64)
    centre = [(c - p) // 2 + (p - 1) / 2 for c, p in zip(crop, patch, strict=True)]
    grid = (torch.zeros(3, 2, *patch), torch.zeros(3, 1, *patch, dtype=torch.int64))
    separable = (torch.zeros(3, 2, *patch), torch.zeros(3, 1, *patch, dtype=torch.int64))
    batch_ops.affine_resample(image, labels, torch.arange(3), torch.diag_embed(factors), centre, *grid,
                              per_sample=False)  # one 3D grid_sample
    batch_ops.axis_resample(image, labels, [0, 1, 2], factors, centre, *separable)
    assert torch.allclose(grid[0], separable[0], atol=1e-5)
    assert torch.equal(grid[1], separable[1]) and grid[1].any()
    floor = image[1].amin(dim=(1, 2, 3)).view(2, 1, 1, 1)
    assert (separable[0][1] == floor).all(0).sum() > 100  # sample 1 zooms out past the crop: padded
    assert torch.equal(separable[0][2], image[2][:, 2:12, 2:14, 3:17].flip(1))  # a flip alone: a flipped crop

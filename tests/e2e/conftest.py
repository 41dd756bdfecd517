"""A tiny real dataset and a tiny real training, shared by the end-to-end tests (CPU, seconds)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

SHAPE = (16, 24, 24)
SPACING = (2.0, 0.5, 0.5)
# small but real: the paper's method at a toy scale
TINY = {
    "train.epochs": 3,
    "train.iters_per_epoch": 6,
    "train.batch_size": 2,
    "train.val_iters": 1,
    "train.workers": 0,
    "train.lr": 0.01,
    "model.params.base_features": 4,
}


def blobs(rng: np.random.Generator, shape=SHAPE, n: int = 3) -> np.ndarray:
    z, y, x = np.indices(shape)
    mask = np.zeros(shape, np.uint8)
    for _ in range(n):
        c = rng.integers([3, 5, 5], [shape[0] - 3, shape[1] - 5, shape[2] - 5])
        r = rng.integers(3, 5)
        mask[((z - c[0]) * 1.5) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2 < r * r] = 1
    return mask


def write_tiff(path: Path, array: np.ndarray, spacing=SPACING) -> None:
    import tifffile

    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, array, imagej=True, resolution=(1 / spacing[2], 1 / spacing[1]),
                     metadata={"spacing": spacing[0], "unit": "um", "axes": "ZYX"[-array.ndim:]})


def make_dataset(root: Path, n_train: int = 4, n_test: int = 2, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("test", n_test)):
        for i in range(n):
            mask = blobs(rng)
            image = (mask * 2.0 + rng.normal(0, 0.6, SHAPE)).astype(np.float32)
            write_tiff(root / split / "images" / f"case{i}.tif", image)
            write_tiff(root / split / "masks" / f"case{i}.tif", (mask * 255).astype(np.uint8))
    return root


@pytest.fixture(scope="session")
def dataset(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="session")
def prepared(dataset, tmp_path_factory):
    from biom3d.core.stages.preprocess import preprocess_dataset

    out = tmp_path_factory.mktemp("prep") / "nuclei"
    return preprocess_dataset(dataset / "train" / "images", dataset / "train" / "masks", out, num_classes=1,
                              workers=0, progress=False)


@pytest.fixture(scope="session")
def trained(prepared, tmp_path_factory):
    from biom3d.core.builder import Builder

    runs = tmp_path_factory.mktemp("runs")
    return Builder(prepared.config_path, overrides=TINY).train(runs_dir=runs)

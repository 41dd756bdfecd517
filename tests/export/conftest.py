"""A tiny trained run and its data, shared by the export tests (trained once per session)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.conftest import TINY, make_dataset

ONE_EPOCH = {**TINY, "train.epochs": 1, "train.iters_per_epoch": 2}


@pytest.fixture(scope="session")
def data(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("data"), n_train=3, n_test=1)


@pytest.fixture(scope="session")
def run_dir(data, tmp_path_factory) -> Path:
    from biom3d.core.builder import Builder
    from biom3d.core.stages.preprocess import preprocess_dataset

    prep = preprocess_dataset(data / "train" / "images", data / "train" / "masks",
                              tmp_path_factory.mktemp("prep") / "tiny", num_classes=1, workers=0, progress=False)
    return Builder(prep.config_path, overrides=ONE_EPOCH).train(runs_dir=tmp_path_factory.mktemp("runs")).run_dir

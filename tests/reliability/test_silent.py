"""Issue 11, silent wrong results: loops, empty masks, oversized patches and unlike inputs are reported."""

from __future__ import annotations

import logging
import os
import shutil

import numpy as np
import pytest

from biom3d.core.errors import DataError
from tests.reliability.conftest import ONE_STEP, make_dataset, preprocess


@pytest.fixture
def biom3d_log(caplog):
    """The biom3d logger's warnings, whatever another test did to its propagation."""
    logger = logging.getLogger("biom3d")
    logger.addHandler(caplog.handler)
    caplog.handler.setLevel(logging.WARNING)
    yield caplog
    logger.removeHandler(caplog.handler)


# 8 ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("target", [".", ".."])
def test_a_symbolic_link_loop_is_not_followed_and_is_reported(dataset, tmp_path, biom3d_log, target):
    from biom3d.core.discovery import get_registry
    from biom3d.core.scan import scan_dataset

    root = tmp_path / "data"
    shutil.copytree(dataset / "train", root)
    for folder in ("images", "masks"):
        os.symlink(target, root / folder / "loop")
    cases = scan_dataset(root / "images", root / "masks", get_registry())
    assert [c.key for c in cases] == ["case0", "case1", "case2", "case3"]
    warned = [r.getMessage() for r in biom3d_log.records]
    assert any("images/loop" in m and "loop" in m.split("->", 1)[1] for m in warned), warned
    assert any("masks/loop" in m for m in warned), warned


def test_a_link_to_a_folder_elsewhere_is_still_followed(dataset, tmp_path):
    from biom3d.core.discovery import get_registry
    from biom3d.core.scan import scan_folder

    (tmp_path / "images").mkdir()
    os.symlink(dataset / "train" / "images", tmp_path / "images" / "more")
    keys = [i.key for i in scan_folder(tmp_path / "images", get_registry())]
    assert keys == ["more/case0", "more/case1", "more/case2", "more/case3"]


# 9 ---------------------------------------------------------------------------------------------------------
def test_all_masks_empty_is_refused_before_anything_is_written(tmp_path):
    data = make_dataset(tmp_path / "data", n_train=3, n_test=0, empty=(0, 1, 2))
    with pytest.raises(DataError, match="no mask has any foreground: all 3 masks") as info:
        preprocess(data, tmp_path / "out")
    assert info.value.exit_code == 2
    assert not (tmp_path / "out").exists()


def test_some_masks_empty_are_named_in_a_warning(tmp_path):
    data = make_dataset(tmp_path / "data", n_train=3, n_test=0, empty=(1,))
    result = preprocess(data, tmp_path / "out")
    empty = [w for w in result.warnings if "no foreground" in w]
    assert len(empty) == 1 and "case1.tif" in empty[0]
    assert "no foreground" in (tmp_path / "out" / "preprocess.log").read_text(encoding="utf-8")


# 10 --------------------------------------------------------------------------------------------------------
def test_a_patch_larger_than_every_image_is_said_and_padded(prepared, tmp_path, biom3d_log):
    from biom3d.core.builder import Builder

    result = Builder(prepared.config_path, overrides={**ONE_STEP, "patch_size": [16, 32, 32]}).train(
        runs_dir=tmp_path)
    warned = " ".join(r.getMessage() for r in biom3d_log.records)
    assert "patch_size [16, 32, 32] is larger than every preprocessed image along D (16 > 8)" in warned
    assert "zero-padded there, 88% of their voxels" in warned and "mostly padding" in warned and "[8, 16, 16]" in warned
    assert {r.levelname for r in biom3d_log.records if "larger than every" in r.getMessage()} == {"WARNING"}
    assert (result.run_dir / "checkpoints" / "last.pt").is_file()  # it trains, padded


def test_a_patch_a_little_larger_than_the_images_is_a_note_not_a_warning(prepared, tmp_path, biom3d_log):
    """As the demo's quadrants (60 slices, patch 64): a small share of each patch is padding."""
    from biom3d.core.builder import Builder

    biom3d_log.handler.setLevel(logging.INFO)
    logger = logging.getLogger("biom3d")
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        Builder(prepared.config_path, overrides={**ONE_STEP, "patch_size": [10, 16, 16]}).train(runs_dir=tmp_path)
    finally:
        logger.setLevel(level)
    said = [r for r in biom3d_log.records if "larger than every" in r.getMessage()]
    assert said and {r.levelname for r in said} == {"INFO"}
    assert "along D (10 > 8)" in said[0].getMessage() and "20% of their voxels" in said[0].getMessage()


def test_a_patch_that_fits_says_nothing(prepared, tmp_path, biom3d_log):
    from biom3d.core.builder import Builder

    Builder(prepared.config_path, overrides=ONE_STEP).train(runs_dir=tmp_path)
    assert not [r for r in biom3d_log.records if "patch_size" in r.getMessage()]


# 11 --------------------------------------------------------------------------------------------------------
def test_predicting_unlike_inputs_warns_naming_the_file_and_the_assumption(trained, tmp_path, biom3d_log):
    from biom3d.core.stages.predict import predict

    inputs = tmp_path / "in"
    inputs.mkdir()
    rng = np.random.default_rng(0)
    np.save(inputs / "nospacing.npy", rng.normal(size=(8, 16, 16)).astype(np.float32))
    np.save(inputs / "flat.npy", rng.normal(size=(16, 16)).astype(np.float32))
    written = predict([trained.run_dir], inputs, tmp_path / "out", progress=False)
    assert sorted(p.name for p in written) == ["flat.npy", "nospacing.npy"]
    assert np.load(tmp_path / "out" / "flat.npy").shape == (16, 16)
    warned = [r.getMessage() for r in biom3d_log.records]
    assert any("nospacing.npy: no voxel spacing" in m and "training spacing 2 x 0.5 x 0.5" in m for m in warned)
    assert any("flat.npy: a 2D image" in m and "trained on 3D volumes" in m and "one slice" in m for m in warned)

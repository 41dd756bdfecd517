"""Issue 11, corrupt or half-finished states: verified before they are skipped, cleaned before they are reused."""

from __future__ import annotations

import logging
import shutil

import numpy as np
import pytest

from tests.reliability.conftest import ONE_STEP, preprocess


# 12 --------------------------------------------------------------------------------------------------------
def test_a_preprocessed_file_cut_short_is_redone_on_rerun(dataset, prepared, tmp_path):
    out = tmp_path / "prep"
    shutil.copytree(prepared.out_dir, out)
    image = out / "images" / "case1.npy"
    data = image.read_bytes()
    image.write_bytes(data[: len(data) // 2])  # a copy interrupted half-way
    mask = out / "masks" / "case2.npy"
    flipped = bytearray(mask.read_bytes())
    flipped[-1] ^= 1  # same size, other content
    mask.write_bytes(bytes(flipped))

    again = preprocess(dataset, out)
    assert (again.processed, again.skipped) == (2, 2)
    assert np.load(image).shape == np.load(prepared.out_dir / "images" / "case1.npy").shape
    assert image.read_bytes() == data
    assert mask.read_bytes() == (prepared.out_dir / "masks" / "case2.npy").read_bytes()


# 13 --------------------------------------------------------------------------------------------------------
def _run_without_checkpoint(prepared, run_dir):
    """A run folder as training leaves it when killed during its first epoch: config files, no checkpoint."""
    from biom3d.core import runs
    from biom3d.core.builder import Builder

    builder = Builder(prepared.config_path, overrides=ONE_STEP)
    run_dir.mkdir(parents=True)
    runs.write_run_files(run_dir, builder.config, builder.registry, data_dir=builder.context.data_dir,
                         folds=builder.context.folds_path)
    return run_dir


def test_resuming_a_run_killed_before_its_first_checkpoint_starts_it_again(prepared, tmp_path, caplog):
    from biom3d.core.builder import Builder

    run = _run_without_checkpoint(prepared, tmp_path / "run")
    logger = logging.getLogger("biom3d")
    logger.addHandler(caplog.handler)
    try:
        result = Builder.resume(run)
    finally:
        logger.removeHandler(caplog.handler)
    assert result.run_dir == run and [h["epoch"] for h in result.history] == [0]
    assert (run / "checkpoints" / "last.pt").is_file()
    assert any("before its first checkpoint" in r.getMessage() and "from the start" in r.getMessage()
               for r in caplog.records)


# 14 --------------------------------------------------------------------------------------------------------
def test_a_preprocess_rerun_removes_the_temporaries_a_kill_left(dataset, prepared, tmp_path):
    out = tmp_path / "prep"
    shutil.copytree(prepared.out_dir, out)
    stale = [out / "images" / ".case0.npy.k1ll3d00.tmp", out / "fg" / ".case3.npz.abcd_123.tmp",
             out / ".preprocess.json.zz99zz99.tmp"]
    for path in stale:
        path.write_bytes(b"half")
    again = preprocess(dataset, out)
    assert again.skipped == 4
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]


def test_a_folder_holding_only_a_killed_runs_temporary_is_taken(dataset, tmp_path):
    out = tmp_path / "prep"
    out.mkdir()
    (out / ".preprocess.json.k1ll3d00.tmp").write_text("{", encoding="utf-8")  # killed while claiming the folder
    assert preprocess(dataset, out).processed == 4
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]


def test_training_again_in_a_killed_run_folder_removes_its_temporaries(prepared, tmp_path):
    from biom3d.core.builder import Builder

    run = _run_without_checkpoint(prepared, tmp_path / "run")
    stale = [run / "checkpoints" / ".last.pt.k1ll3d00.tmp", run / "snapshots" / ".epoch-0001.png.k1ll3d00.tmp.png",
             run / ".log.csv.k1ll3d00.tmp", run / ".curves.png.k1ll3d00.tmp.png"]
    for path in stale:
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"half")
    Builder(prepared.config_path, overrides=ONE_STEP).train(run_dir=run)  # what `biom3d run` does then
    assert not [p for p in run.rglob("*") if ".tmp" in p.name]
    assert (run / "checkpoints" / "last.pt").is_file()


def test_a_snapshot_interrupted_mid_write_leaves_neither_half_a_png_nor_a_temporary(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    from biom3d.core.builtins.callbacks import save_overlay

    def killed(self, fname, **kw):
        with open(fname, "wb") as f:
            f.write(b"\x89PNG half")
        raise KeyboardInterrupt  # a signal arriving mid-write

    monkeypatch.setattr(Figure, "savefig", killed)
    image, truth = np.zeros((1, 4, 8, 8), np.float32), np.zeros((4, 8, 8), np.uint8)
    with pytest.raises(KeyboardInterrupt):
        save_overlay(tmp_path / "snapshots" / "epoch-0001.png", image, truth, truth)
    assert list((tmp_path / "snapshots").iterdir()) == []


def test_a_predict_rerun_removes_its_temporaries_and_nothing_else(dataset, trained, tmp_path):
    from biom3d.core.stages.predict import predict

    out = tmp_path / "out"
    out.mkdir()
    stale, unrelated = out / ".case0.tif.k1ll3d00.tmp", out / ".my-notes.tmp"
    stale.write_bytes(b"half")
    unrelated.write_text("mine", encoding="utf-8")
    predict([trained.run_dir], dataset / "test" / "images", out, progress=False)
    assert not stale.exists() and unrelated.read_text(encoding="utf-8") == "mine"
    assert (out / "case0.tif").is_file()

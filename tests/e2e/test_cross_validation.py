"""`biom3d run --cross-validation`: one run per fold, each held-out training image predicted by the run that
never saw it (the cross-validation Dice), the test images by the ensemble of the folds."""

import csv
import subprocess
import sys

import numpy as np
import pytest
import tifffile

from tests.e2e.conftest import TINY

TRAIN_FLAGS = ["--epochs", "2", "--iters-per-epoch", "4", "--val-iters", "1", "--workers", "0", "--batch-size", "2",
               "--set", f"model.params.base_features={TINY['model.params.base_features']}"]


def _biom3d(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "biom3d.cli", *args], capture_output=True, text=True,
                          encoding="utf-8", errors="replace", timeout=timeout)


@pytest.fixture(scope="module")
def cross_validated(dataset, tmp_path_factory):
    runs = tmp_path_factory.mktemp("cv")
    out = _biom3d("run", "-i", str(dataset / "train" / "images"), "-m", str(dataset / "train" / "masks"), "-k", "1",
                  "--test-images", str(dataset / "test" / "images"), "--test-masks", str(dataset / "test" / "masks"),
                  "--cross-validation", "--runs-dir", str(runs), "--name", "cv", *TRAIN_FLAGS)
    assert out.returncode == 0, out.stderr
    return runs / "cv", out


def _held_out(folder):
    with (folder / "preprocessed" / "folds.csv").open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return {r["filename"].removesuffix(".npy"): int(r["fold"]) for r in rows}


def test_each_training_image_is_scored_by_the_fold_run_that_never_saw_it(cross_validated, dataset, tmp_path):
    from biom3d.core.stages.evaluate import evaluate
    from biom3d.core.stages.predict import predict

    folder, out = cross_validated
    held_out = _held_out(folder)  # 4 images: 2 folds of 2
    assert sorted(set(held_out.values())) == [0, 1]
    fold_runs = [folder / "folds" / f"fold-{k}" for k in (0, 1)]
    for k, run in enumerate(fold_runs):
        assert (run / "checkpoints" / "best.pt").is_file()
        with (run / "folds.csv").open(newline="", encoding="utf-8") as f:  # the run trained on the other fold
            assert {r["filename"] for r in csv.DictReader(f)} == {f"{n}.npy" for n in held_out}
        assert f"fold: {k}" in (run / "config.yaml").read_text(encoding="utf-8")
    cv = folder / "cv" / "predictions"
    assert sorted(p.stem for p in cv.iterdir()) == sorted(held_out)
    differs = 0
    for k in range(len(fold_runs)):  # each image equals its own fold run's prediction, not the other's
        for j, other in enumerate(fold_runs):
            predict([other], dataset / "train" / "images", tmp_path / f"by{j}", progress=False,
                    keys=[n for n, f in held_out.items() if f == k])
        for name in (n for n, f in held_out.items() if f == k):
            written = tifffile.imread(cv / f"{name}.tif")
            assert np.array_equal(written, tifffile.imread(tmp_path / f"by{k}" / f"{name}.tif")), name
            differs += not np.array_equal(written, tifffile.imread(tmp_path / f"by{1 - k}" / f"{name}.tif"))
    assert differs, "the two fold runs predict alike: this test could not tell them apart"
    report = evaluate(cv, dataset / "train" / "masks")
    rows = {(r["file"], r["class"]): float(r["dice"]) for r in csv.DictReader(
        (folder / "cv" / "eval.csv").open(encoding="utf-8"))}
    assert rows[("mean", "all")] == pytest.approx(report.mean("dice"), abs=1e-6)
    assert "cross-validation (2 folds" in out.stdout and f"mean Dice {report.mean('dice'):.4f}" in out.stdout
    assert report.mean("dice") > 0.5  # blobs this clear are learnt by each fold run


def test_the_test_images_are_predicted_by_the_ensemble_of_the_folds(cross_validated, dataset, tmp_path):
    from biom3d.core.stages.predict import predict

    folder, out = cross_validated
    fold_runs = [folder / "folds" / f"fold-{k}" for k in (0, 1)]
    predict(fold_runs, dataset / "test" / "images", tmp_path / "ensemble", progress=False)
    for name in ("case0.tif", "case1.tif"):
        assert np.array_equal(tifffile.imread(folder / "predictions" / name), tifffile.imread(tmp_path / "ensemble" / name))
    assert "test images (ensemble of the 2 folds)" in out.stdout and (folder / "eval.csv").is_file()

    again = _biom3d("predict", str(folder), "-i", str(dataset / "test" / "images"), "-o", str(tmp_path / "again"))
    assert again.returncode == 0 and "ensembling its 2 fold runs" in again.stderr, again.stderr
    assert np.array_equal(tifffile.imread(tmp_path / "again" / "case0.tif"),
                          tifffile.imread(tmp_path / "ensemble" / "case0.tif"))
    export = _biom3d("export", str(folder), "--format", "onnx", "-o", str(tmp_path / "m.onnx"))
    assert export.returncode == 2 and "one per fold" in export.stderr and str(fold_runs[1]) in export.stderr
    assert not (tmp_path / "m.onnx").exists()


def test_a_rerun_skips_every_finished_fold(cross_validated):
    folder, _ = cross_validated
    out = _biom3d("run", "--resume", str(folder / "folds" / "fold-1"))  # a fold run names its pipeline
    assert out.returncode == 0, out.stderr
    assert out.stderr.count("train: done already") == 2 and out.stderr.count("predict: 0 new mask(s)") == 3
    assert "cross-validation (2 folds" in out.stdout


def test_the_gui_lists_a_cross_validated_pipeline_as_one_finished_run(cross_validated):
    from biom3d.gui.runs import read_run

    folder, _ = cross_validated
    info = read_run(folder)
    assert info.kind == "pipeline" and info.status == "finished" and info.has_checkpoint
    assert info.run_dir == str(folder / "folds" / "fold-1")  # the last fold trained: whose curves the page shows


def test_cross_validation_refuses_a_fold_and_a_single_image(dataset, tmp_path):
    args = ["-i", str(dataset / "train" / "images"), "-m", str(dataset / "train" / "masks"), "-k", "1", "--cv",
            "--runs-dir", str(tmp_path)]
    out = _biom3d("run", *args, "--fold", "1")
    assert out.returncode == 2 and "train.fold: cross-validation trains every fold" in out.stderr, out.stderr
    assert not any(tmp_path.iterdir())  # refused before the pipeline folder was made
    one = tmp_path / "one"
    for kind in ("images", "masks"):
        (one / kind).mkdir(parents=True)
        (one / kind / "case0.tif").write_bytes((dataset / "train" / kind / "case0.tif").read_bytes())
    out = _biom3d("run", "-i", str(one / "images"), "-m", str(one / "masks"), "-k", "1", "--cv",
                  "--runs-dir", str(tmp_path), *TRAIN_FLAGS)
    assert out.returncode == 2 and "cross-validation needs two folds or more" in out.stderr, out.stderr
    assert "case0-val" in out.stderr and not (tmp_path / "images" / "folds").exists()  # no training started

"""Issue 16: the flags of `biom3d run` take effect (train settings in the run's resolved config, the
auto-configuration budget in the plan, the fold split's seed), `--resume` extends and re-predicts, `--finetune`
starts from a run's weights, and `--checkpoint best|last` loads the file it names on `predict` and `run`."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from biom3d.cli.app import app

TRAIN_FLAGS = ["--epochs", "1", "--iters-per-epoch", "2", "--batch-size", "1", "--val-iters", "1", "--lr", "0.005",
               "--fold", "1", "--seed", "7", "--workers", "0", "--no-fp16", "--device", "cpu"]
EXPECTED_TRAIN = {"epochs": 1, "iters_per_epoch": 2, "batch_size": 1, "val_iters": 1, "lr": 0.005, "fold": 1,
                  "seed": 7, "workers": 0, "fp16": False, "device": "cpu"}

# any config key, the value read as YAML; --epochs wins over the --set of its own key
SET_FLAGS = ["--set", "train.optimizer=adam", "--set", "train.grad_clip=null", "--set", "model.params.base_features=6",
             "--set", "train.epochs=9"]


def cli(*args: str | Path) -> None:
    """`biom3d ARGS` in this process (the logs reach caplog); a biom3d error is raised."""
    result = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output


def masks(folder: Path) -> dict[str, np.ndarray]:
    import tifffile

    return {p.name: tifffile.imread(p) for p in sorted(folder.glob("*.tif"))}


@pytest.fixture(scope="module")
def pipeline(dataset, tmp_path_factory):
    """One `biom3d run` with every train flag, the budget flags and --checkpoint last."""
    root = tmp_path_factory.mktemp("flags")
    config = root / "run.yaml"
    config.write_text(yaml.safe_dump({
        "num_classes": 1,
        "data": {"images": str(dataset / "train" / "images"), "masks": str(dataset / "train" / "masks"),
                 "test_images": str(dataset / "test" / "images"), "test_masks": str(dataset / "test" / "masks")},
        "model": {"params": {"base_features": 4}},
        "predictor": {"params": {"tta": False}},
    }), encoding="utf-8")
    logger, handler = logging.getLogger("biom3d"), _Capture()
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        cli("run", config, "--name", "flags", "--runs-dir", root, *TRAIN_FLAGS, "--max-dim", "16", "--max-pool", "2",
            "--max-batch", "3", "--checkpoint", "last", "--probabilities", root / "probs", *SET_FLAGS)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    return root / "flags", handler.text()


class _Capture(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())

    def text(self) -> str:
        return "\n".join(self.lines)


def test_run_flags_reach_the_run_config_the_plan_and_the_fold_split(pipeline):
    from biom3d.core.builtins.autoconfig import auto_config
    from biom3d.core.folds import make_folds

    folder, log = pipeline
    run_cfg = yaml.safe_load((folder / "run" / "config.yaml").read_text(encoding="utf-8"))
    assert {k: run_cfg["train"][k] for k in EXPECTED_TRAIN} == EXPECTED_TRAIN
    assert run_cfg["train"]["optimizer"] == "adam" and run_cfg["train"]["grad_clip"] is None
    assert run_cfg["model"]["params"]["base_features"] == 6
    prep_cfg = yaml.safe_load((folder / "preprocessed" / "config.yaml").read_text(encoding="utf-8"))
    assert prep_cfg["autoconfig"] == run_cfg["autoconfig"] == {"max_dim": 16, "max_pool": 2, "max_batch": 3}
    median = json.loads((folder / "preprocessed" / "fingerprint.json").read_text(encoding="utf-8"))["median_shape"]
    planned = auto_config(median, max_dim=16, max_pool=2)
    assert (tuple(run_cfg["patch_size"]), tuple(run_cfg["num_pools"])) == (planned.patch_size, planned.num_pools)
    default = auto_config(median)
    assert (planned.patch_size, planned.num_pools) != (default.patch_size, default.num_pools)  # the flags counted
    folds = dict(line.split(",") for line in (folder / "run" / "folds.csv").read_text(encoding="utf-8").splitlines()[1:])
    assert {k: int(v) for k, v in folds.items()} == make_folds(list(folds), seed=7)  # --seed split the folds
    assert "training UNet on cpu: 1 epochs x 2 iterations, batch 1" in log
    assert f"predict: {folder / 'run'} with checkpoints/last.pt, epoch 1" in log
    assert len(masks(folder / "predictions")) == 2 and (folder / "eval.csv").is_file()
    # --probabilities: the test images' probabilities beside their masks, on the images' grid
    assert sorted(p.name for p in (folder.parent / "probs").iterdir()) == ["case0.npz", "case1.npz"]
    with np.load(folder.parent / "probs" / "case0.npz") as saved:
        probabilities = saved["probabilities"].astype(np.float32)
    assert probabilities.shape == (2, *masks(folder / "predictions")["case0.tif"].shape)
    np.testing.assert_allclose(probabilities.sum(0), 1.0, atol=2e-3)


def test_run_resume_extends_the_run_and_predicts_again_with_the_chosen_weights(pipeline, caplog):
    folder, _ = pipeline
    caplog.set_level(logging.INFO, logger="biom3d")
    cli("run", "--resume", folder / "run", "--epochs", "2")  # the run/ inside names its pipeline too
    epochs = [line.split(",")[0] for line in (folder / "run" / "log.csv").read_text(encoding="utf-8").splitlines()[1:]]
    assert epochs == ["0", "1"]
    assert "train: extending the run" in caplog.text and "preprocess: done already" in caplog.text
    assert "weights changed since the last predictions (last.pt, now best.pt)" in caplog.text
    assert yaml.safe_load((folder / "config.yaml").read_text(encoding="utf-8"))["train"]["epochs"] == 2

    caplog.clear()
    cli("run", "--resume", folder, "--checkpoint", "last")
    assert "train: done already" in caplog.text and "with checkpoints/last.pt, epoch 2" in caplog.text
    assert "predicting all again" in caplog.text and "predict: 2 new mask(s)" in caplog.text
    assert yaml.safe_load((folder / "config.yaml").read_text(encoding="utf-8"))["data"]["probabilities"] == str(
        folder.parent / "probs")  # --resume keeps saving them where the first run did
    caplog.clear()
    cli("run", "--resume", folder, "--checkpoint", "last")
    assert "predict: 0 new mask(s)" in caplog.text  # same weights: the masks stand


def test_run_finetune_starts_from_the_run_and_resumes_an_interrupted_one(dataset, trained, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="biom3d")
    cli("run", "-i", dataset / "train" / "images", "-m", dataset / "train" / "masks", "-k", "1", "--name", "ft",
        "--runs-dir", tmp_path, "--finetune", trained.run_dir, "--epochs", "1", "--iters-per-epoch", "1",
        "--val-iters", "1", "--workers", "0")
    folder = tmp_path / "ft"
    assert f"fine-tuning from {trained.run_dir}" in caplog.text and "trained tensors" in caplog.text
    run_cfg = yaml.safe_load((folder / "run" / "config.yaml").read_text(encoding="utf-8"))
    old_cfg = yaml.safe_load((trained.run_dir / "config.yaml").read_text(encoding="utf-8"))
    assert run_cfg["model"] == old_cfg["model"] and run_cfg["patch_size"] == old_cfg["patch_size"]
    assert (folder / "run" / "checkpoints" / "best.pt").is_file() and not (folder / "run.finetuning").exists()
    state = json.loads((folder / "pipeline.json").read_text(encoding="utf-8"))
    assert state["train"]["done"] and state["train"]["finetune"] == str(trained.run_dir.resolve())

    # as a kill during the fine-tuning leaves it: run.finetuning/<run> with a checkpoint, no run/
    staged = folder / "run.finetuning" / "ft-20240101-000000"
    staged.parent.mkdir()
    shutil.move(folder / "run", staged)
    state["train"]["done"] = False
    (folder / "pipeline.json").write_text(json.dumps(state), encoding="utf-8")
    caplog.clear()
    cli("run", "--resume", folder)
    assert f"train: resuming the interrupted fine-tuning {staged}" in caplog.text
    assert (folder / "run" / "checkpoints" / "best.pt").is_file() and not (folder / "run.finetuning").exists()


def _doctored(trained, folder: Path) -> Path:
    """A copy of the trained run whose best.pt predicts foreground everywhere and last.pt background."""
    import torch

    from biom3d.core.checkpoints import PREVIOUS, load_checkpoint, save_checkpoint

    shutil.copytree(trained.run_dir, folder)
    (folder / "checkpoints" / PREVIOUS).unlink(missing_ok=True)
    for name, sign in (("best.pt", 1.0), ("last.pt", -1.0)):
        state = load_checkpoint(folder / "checkpoints" / name)
        state["model"]["head.weight"] = torch.zeros_like(state["model"]["head.weight"])
        state["model"]["head.bias"] = torch.tensor([-50.0 * sign, 50.0 * sign])  # background, foreground
        save_checkpoint(folder / "checkpoints" / name, state)
    return folder


def test_predict_checkpoint_loads_the_file_it_names_for_one_run_and_ensembles(trained, dataset, tmp_path, caplog):
    from biom3d.core.errors import RunError

    caplog.set_level(logging.INFO, logger="biom3d")
    one, two = _doctored(trained, tmp_path / "one"), _doctored(trained, tmp_path / "two")
    images = dataset / "test" / "images"
    cli("predict", one, "-i", images, "-o", tmp_path / "default", "--no-tta")
    cli("predict", one, "-i", images, "-o", tmp_path / "best", "--no-tta", "--checkpoint", "best")
    cli("predict", one, "-i", images, "-o", tmp_path / "last", "--no-tta", "--checkpoint", "last")
    cli("predict", one, two, "-i", images, "-o", tmp_path / "ensemble", "--no-tta", "--checkpoint", "last")
    assert f"predict: {two} with checkpoints/last.pt" in caplog.text
    for name, foreground in (("default", True), ("best", True), ("last", False), ("ensemble", False)):
        found = masks(tmp_path / name)
        assert len(found) == 2, name
        assert all(bool((m > 0).all()) if foreground else not m.any() for m in found.values()), name

    (one / "checkpoints" / "best.pt").unlink()
    with pytest.raises(RunError) as info:
        cli("predict", one, two, "-i", images, "-o", tmp_path / "none", "--checkpoint", "best")
    message = str(info.value)
    assert f"run {one} has no best checkpoint" in message and str(one / "checkpoints" / "best.pt") in message
    assert "holds last.pt" in message and "--checkpoint last" in message and "\n" not in message
    assert not (tmp_path / "none").exists()  # refused before anything was predicted
    cli("predict", one, "-i", images, "-o", tmp_path / "fallback", "--no-tta")  # no best: the newest, last
    assert not any(m.any() for m in masks(tmp_path / "fallback").values())

import csv
import logging
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

from biom3d.core.builder import Builder
from tests.e2e.conftest import TINY


def _log_rows(run_dir):
    if not (run_dir / "log.csv").exists():
        return []
    with open(run_dir / "log.csv", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_run_folder_is_complete(trained):
    run = trained.run_dir
    for name in ("config.yaml", "plugins.json", "fingerprint.json", "folds.csv", "log.csv", "curves.png",
                 "checkpoints/last.pt", "checkpoints/best.pt"):
        assert (run / name).is_file(), name
    assert list((run / "snapshots").glob("epoch-*.png"))
    cfg = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))
    assert cfg["model"]["name"] == "models/unet3d-vgg-deep" and cfg["model"]["params"]["base_features"] == 4
    assert os.path.isabs(cfg["data"]["preprocessed"])
    rows = _log_rows(run)
    assert [r["epoch"] for r in rows] == ["0", "1", "2"]
    assert {"lr", "train_loss", "val_loss", "val_dice", "val_dice_1", "val_iou", "time"} <= set(rows[0])
    used = __import__("json").loads((run / "plugins.json").read_text(encoding="utf-8"))["used"]
    assert used["models"]["dist"] == "biom3d-models" and "models/unet3d-vgg-deep" in used["models"]["components"]
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert state["epoch"] == 2 and {"model", "optimizer", "scaler", "rng", "history"} <= set(state)


def test_loss_decreases(trained):
    losses = [h["train_loss"] for h in trained.history]
    assert losses[-1] < losses[0]


def test_same_seed_same_first_epoch_losses(prepared, tmp_path):
    overrides = {**TINY, "train.epochs": 1, "train.workers": 2}
    a = Builder(prepared.config_path, overrides=overrides).train(runs_dir=tmp_path / "a")
    b = Builder(prepared.config_path, overrides=overrides).train(runs_dir=tmp_path / "b")
    assert a.history[0]["train_loss"] == b.history[0]["train_loss"]
    assert a.history[0]["val_loss"] == b.history[0]["val_loss"]
    c = Builder(prepared.config_path, overrides={**overrides, "train.seed": 7}).train(runs_dir=tmp_path / "c")
    assert c.history[0]["train_loss"] != a.history[0]["train_loss"]


def test_resume_after_sigkill_continues_the_same_run(prepared, tmp_path):
    raw = yaml.safe_load(prepared.config_path.read_text(encoding="utf-8"))
    raw["data"]["preprocessed"] = str(prepared.out_dir)
    from biom3d.core.config import apply_overrides

    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(apply_overrides(raw, {**TINY, "train.epochs": 6})), encoding="utf-8")
    cmd = [sys.executable, "-m", "biom3d.cli", "train", str(config), "--runs-dir", str(tmp_path / "runs")]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    run_dir = None
    while time.time() < deadline:
        found = list((tmp_path / "runs").glob("*/checkpoints/last.pt"))
        if found:
            run_dir = found[0].parent.parent
            if len(_log_rows(run_dir)) >= 2:
                break
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert run_dir is not None, "training never wrote a checkpoint"
    done_before = len(_log_rows(run_dir))
    assert done_before < 6
    out = subprocess.run([sys.executable, "-m", "biom3d.cli", "train", "--resume", str(run_dir)],
                         capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=300)
    assert out.returncode == 0, out.stderr
    assert "resuming" in out.stderr
    assert [r["epoch"] for r in _log_rows(run_dir)] == [str(e) for e in range(6)]
    assert torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["epoch"] == 5
    assert not list(run_dir.rglob("*.tmp"))


def test_corrupted_last_checkpoint_falls_back_with_a_warning(trained, tmp_path, caplog):
    run = tmp_path / "run"
    shutil.copytree(trained.run_dir, run)
    prev_epoch = torch.load(run / "checkpoints" / "last-prev.pt", weights_only=True)["epoch"]
    (run / "checkpoints" / "last.pt").write_bytes(b"PK\x03\x04 truncated")
    with caplog.at_level(logging.WARNING, logger="biom3d"):
        result = Builder.resume(run, epochs=4)
    assert "last.pt cannot be read" in caplog.text
    assert [h["epoch"] for h in result.history] == list(range(prev_epoch + 1)) + list(range(prev_epoch + 1, 4))


def test_a_finished_run_can_be_extended(trained, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained.run_dir, run)
    result = Builder.resume(run, epochs=5)
    assert [h["epoch"] for h in result.history] == [0, 1, 2, 3, 4]
    assert yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))["train"]["epochs"] == 5


def test_fewer_epochs_than_trained_are_refused_and_the_config_kept(trained, tmp_path):
    from biom3d.core.errors import InputError

    run = tmp_path / "run"
    shutil.copytree(trained.run_dir, run)
    before = (run / "config.yaml").read_bytes()
    with pytest.raises(InputError, match="has trained 3 epochs already; --epochs 2 cannot shorten it"):
        Builder.resume(run, epochs=2)
    assert (run / "config.yaml").read_bytes() == before  # it said epochs: 2 for a run of 3


def test_finetune_on_images_of_other_channels_is_refused_before_training(trained, prepared, tmp_path):
    from biom3d.core.errors import InputError

    with pytest.raises(InputError, match=r"trained on images of 1 channel\(s\), the new config's data has 2"):
        Builder.finetune(trained.run_dir, prepared.config_path, overrides={**TINY, "in_channels": 2},
                         runs_dir=tmp_path)  # it trained, then failed in the first convolution ("a bug")
    assert not any(tmp_path.iterdir())


def test_finetune_starts_from_trained_weights_and_keeps_the_architecture(trained, prepared, tmp_path, caplog):
    overrides = {**TINY, "train.epochs": 1, "patch_size": [16, 16, 16], "model.params.base_features": 8}
    with caplog.at_level(logging.INFO, logger="biom3d"):
        result = Builder.finetune(trained.run_dir, prepared.config_path, overrides=overrides, runs_dir=tmp_path)
    assert result.run_dir.parent == tmp_path and result.run_dir != trained.run_dir
    cfg = yaml.safe_load((result.run_dir / "config.yaml").read_text(encoding="utf-8"))
    old = yaml.safe_load((trained.run_dir / "config.yaml").read_text(encoding="utf-8"))
    assert cfg["patch_size"] == old["patch_size"] and cfg["model"] == old["model"]
    assert "kept" in caplog.text and "patch_size" in caplog.text
    assert "re-initialised" not in caplog.text  # every trained tensor was loaded


def test_finetune_into_a_chosen_folder_and_never_over_a_trained_run(trained, prepared, tmp_path):
    from biom3d.core.errors import InputError

    target = tmp_path / "tuned"
    result = Builder.finetune(trained.run_dir, prepared.config_path, overrides={**TINY, "train.epochs": 1},
                              new_run_dir=target)
    assert result.run_dir == target and (target / "checkpoints" / "last.pt").is_file()
    before = {p: p.read_bytes() for p in target.rglob("*") if p.is_file()}
    with pytest.raises(InputError, match="holds a trained run already"):
        Builder.finetune(trained.run_dir, prepared.config_path, overrides={**TINY, "train.epochs": 1},
                         new_run_dir=target)
    with pytest.raises(InputError, match="holds a trained run already"):
        Builder(prepared.config_path, overrides=TINY).train(run_dir=target)
    assert {p: p.read_bytes() for p in target.rglob("*") if p.is_file()} == before  # the run is as it was


def test_deep_supervision_mismatch_is_a_config_error(prepared, tmp_path):
    from biom3d.core.errors import ConfigError

    with pytest.raises(ConfigError, match="deep-supervision heads"):
        Builder(prepared.config_path, overrides={**TINY, "model.params.deep_supervision": True,
                                                 "loss": {"name": "dice-ce"}}).train(runs_dir=tmp_path)


def test_the_paper_stack_keeps_the_best_checkpoint_by_validation_loss_as_the_original(trained):
    from types import SimpleNamespace

    from biom3d.core.builtins.plugin import TrainerParams
    from biom3d.core.builtins.trainer import SegTrainer

    cfg = yaml.safe_load((trained.run_dir / "config.yaml").read_text(encoding="utf-8"))
    assert cfg["trainer"]["params"]["monitor"] == "loss"
    losses = [h["val_loss"] for h in trained.history]
    best = torch.load(trained.run_dir / "checkpoints" / "best.pt", weights_only=True)["epoch"]
    assert best == losses.index(min(losses))
    job = SimpleNamespace(train=SimpleNamespace(val_iters=1), metrics=[("dice", None, True)])
    assert SegTrainer(TrainerParams(monitor="loss"), None)._monitor(job) == ("val_loss", False)
    assert SegTrainer(TrainerParams(), None)._monitor(job) == ("val_dice", True)  # core's default: the metric
    job.train.val_iters = 0
    assert SegTrainer(TrainerParams(), None)._monitor(job) == ("train_loss", False)

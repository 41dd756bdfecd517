"""`biom3d run`: the whole pipeline from one config, and its resumption after a kill during training."""

import json
import shutil
import signal
import subprocess
import sys
import time

import tifffile
import yaml

from tests.e2e.conftest import TINY


def _config(tmp_path, dataset, epochs):
    raw = {
        "name": "tiny",
        "runs_dir": str(tmp_path / "runs"),
        "num_classes": 1,
        "data": {"images": str(dataset / "train" / "images"), "masks": str(dataset / "train" / "masks"),
                 "test_images": str(dataset / "test" / "images"), "test_masks": str(dataset / "test" / "masks")},
        "train": {k.split(".", 1)[1]: v for k, v in TINY.items() if k.startswith("train.")} | {"epochs": epochs},
        "model": {"name": "unet3d-vgg-deep", "params": {"base_features": 4}},
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


def _biom3d(*args, timeout=300, cwd=None):
    return subprocess.run([sys.executable, "-m", "biom3d.cli", *args], capture_output=True, text=True,
                          encoding="utf-8", errors="replace", timeout=timeout, cwd=cwd)


def test_run_resumes_after_a_kill_during_training_and_skips_finished_stages(dataset, tmp_path):
    masks = shutil.copytree(dataset / "train" / "masks", tmp_path / "masks")  # corrected in place at the end
    config = _config(tmp_path, dataset, epochs=5)
    config.write_text(config.read_text(encoding="utf-8").replace(str(dataset / "train" / "masks"), str(masks)), encoding="utf-8")
    folder = tmp_path / "runs" / "tiny"
    proc = subprocess.Popen([sys.executable, "-m", "biom3d.cli", "run", str(config)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and not (folder / "run" / "checkpoints" / "last.pt").exists():
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (folder / "run" / "checkpoints" / "last.pt").exists(), "training never started"
    state = json.loads((folder / "pipeline.json").read_text(encoding="utf-8"))
    assert state["preprocess"]["done"] and "train" not in state
    prep_mtime = (folder / "preprocessed" / "images" / "case0.npy").stat().st_mtime

    out = _biom3d("run", str(config))
    assert out.returncode == 0, out.stderr
    assert "preprocess: done already" in out.stderr and "resuming" in out.stderr
    assert (folder / "preprocessed" / "images" / "case0.npy").stat().st_mtime == prep_mtime
    epochs = [line.split(",")[0] for line in (folder / "run" / "log.csv").read_text(encoding="utf-8").splitlines()[1:]]
    assert epochs == ["0", "1", "2", "3", "4"]
    assert sorted(p.name for p in (folder / "predictions").iterdir()) == ["case0.tif", "case1.tif"]
    assert "mean Dice" in out.stdout and (folder / "eval.csv").is_file()
    state = json.loads((folder / "pipeline.json").read_text(encoding="utf-8"))
    assert all(state[s]["done"] for s in ("preprocess", "train", "predict", "eval"))

    again = _biom3d("run", str(config))
    assert again.returncode == 0, again.stderr
    assert "train: done already" in again.stderr and "predict: 0 new mask(s)" in again.stderr
    # the pipeline folder names its model to `biom3d predict` as well as its run/ does
    out = _biom3d("predict", str(folder), "--input", str(dataset / "test" / "images"), "--output",
                  str(tmp_path / "again"))
    assert out.returncode == 0 and "using its trained run" in out.stderr, out.stderr
    assert sorted(p.name for p in (tmp_path / "again").iterdir()) == ["case0.tif", "case1.tif"]

    # a mask corrected in place (same size): the finished stages are another data's, and nothing is replaced
    kept = {name: (folder / name).read_bytes() for name in ("config.yaml", "pipeline.json")}
    mask = tifffile.imread(masks / "case1.tif")
    mask[0] = 0
    tifffile.imwrite(masks / "case1.tif", mask)
    changed = _biom3d("run", str(config))
    assert changed.returncode == 2 and "Traceback" not in changed.stderr
    assert f"{folder} was made from other data" in changed.stderr and "data.masks: changed case1.tif" in changed.stderr
    assert "--name" in changed.stderr
    assert {name: (folder / name).read_bytes() for name in kept} == kept
    other = _biom3d("run", str(config), "--num-classes", "2")  # a preprocessing setting
    assert other.returncode == 2 and "num_classes: 1 -> 2" in other.stderr, other.stderr


def test_run_without_a_config(dataset, tmp_path):
    out = _biom3d("run", "--images", str(dataset / "train" / "images"), "--masks", str(dataset / "train" / "masks"),
                  "--num-classes", "1", "--epochs", "1", "--iters-per-epoch", "2", "--workers", "0",
                  "--runs-dir", str(tmp_path), "--name", "quick")
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "quick" / "run" / "checkpoints" / "best.pt").is_file()
    assert yaml.safe_load((tmp_path / "quick" / "config.yaml").read_text(encoding="utf-8"))["num_classes"] == 1


def test_bad_paths_are_one_paragraph_errors(tmp_path):
    (tmp_path / "c.yaml").write_text("num_classes: 1\ndata: {images: nowhere, masks: nowhere}\n", encoding="utf-8")
    out = _biom3d("run", str(tmp_path / "c.yaml"), cwd=tmp_path)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert f"data.images: {tmp_path / 'nowhere'} does not exist" in out.stderr and "data.masks" in out.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml"]  # no pipeline folder (runs/biom3d) was made
    (tmp_path / "t.yaml").write_text("num_classes: 1\npatch_size: [16, 16, 16]\ndata: {preprocessed: missing}\n", encoding="utf-8")
    out = _biom3d("train", str(tmp_path / "t.yaml"))
    assert out.returncode == 2 and "data.preprocessed" in out.stderr and "Traceback" not in out.stderr
    out = _biom3d("preprocess", "-i", str(tmp_path / "none"), "-m", str(tmp_path / "none"), "-k", "1")
    assert out.returncode == 2 and "does not exist" in out.stderr and "Traceback" not in out.stderr


def test_test_images_no_writer_can_write_stop_the_run_before_training(dataset, tmp_path):
    import numpy as np
    from PIL import Image

    (tmp_path / "png").mkdir()
    Image.fromarray(np.zeros((24, 24), np.uint8)).save(tmp_path / "png" / "a.png")  # MONAI reads it, none writes it
    out = _biom3d("run", "-i", str(dataset / "train" / "images"), "-m", str(dataset / "train" / "masks"), "-k", "1",
                  "--test-images", str(tmp_path / "png"), "--runs-dir", str(tmp_path / "runs"), "--epochs", "1")
    assert out.returncode == 2 and "cannot write the prediction of" in out.stderr and "--writer" in out.stderr, out.stderr
    assert not (tmp_path / "runs").exists()  # it trained, then stopped at the predict stage

"""Real DDP in two CPU processes (gloo): a tiny preprocessed dataset, `biom3d train` under torchrun, and each
rank's record of what it contributed to every all-reduce (``BIOM3D_DDP_DEBUG_DIR``)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from tests.e2e.conftest import make_dataset

#: seconds a collective waits for the other rank before failing (train.ddp_timeout). Generous where no rank
#: fails: at an epoch's end rank 0 alone draws the curves and writes the snapshots while rank 1 waits, which a
#: loaded 2-core machine can stretch; the failure tests set their own, small one.
TRAIN = {"epochs": 2, "iters_per_epoch": 2, "batch_size": 2, "val_iters": 1, "workers": 0, "device": "cpu",
         "ddp_timeout": 180}


def child_env(**extra: str) -> dict[str, str]:
    """One thread per process (two ranks on two cores), no progress bars to wait for."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "MPLBACKEND": "Agg", **extra}
    for var in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        if var not in extra:
            env.pop(var, None)
    return env


def torchrun(args: list[str], *, env: dict[str, str] | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
    """``python -m torch.distributed.run --standalone --nproc_per_node=2 -m biom3d.cli ARGS``."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "biom3d.cli",
           *args]
    return subprocess.run(cmd, env=env or child_env(), capture_output=True, text=True, encoding="utf-8",
                          errors="replace", timeout=timeout)


def log_rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "log.csv", encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def debug_records(folder: Path, rank: int) -> list[dict]:
    return [json.loads(line) for line in (folder / f"rank-{rank}.jsonl").read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="session")
def prepared(tmp_path_factory) -> SimpleNamespace:
    """A preprocessed dataset and a tiny config next to its config.yaml (4-feature network, 2 epochs of 2 steps)."""
    from biom3d.core.stages.preprocess import preprocess_dataset

    root = make_dataset(tmp_path_factory.mktemp("ddp-data"), n_train=4, n_test=3)
    prep = preprocess_dataset(root / "train" / "images", root / "train" / "masks",
                              tmp_path_factory.mktemp("ddp-prep") / "nuclei", num_classes=1, workers=0, progress=False)
    config = yaml.safe_load(prep.config_path.read_text(encoding="utf-8"))
    config["train"] = {**config.get("train", {}), **TRAIN}
    config["model"] = {"params": {"base_features": 4}}
    tiny = prep.config_path.with_name("tiny.yaml")
    tiny.write_text(yaml.safe_dump(config), encoding="utf-8")
    return SimpleNamespace(config=tiny, test_images=root / "test" / "images")


@pytest.fixture(scope="session")
def ddp_run(prepared, tmp_path_factory) -> SimpleNamespace:
    """Two ranks train the tiny config for 2 epochs under torchrun."""
    tmp = tmp_path_factory.mktemp("ddp-run")
    debug = tmp / "debug"
    proc = torchrun(["train", str(prepared.config), "--runs-dir", str(tmp / "runs")],
                    env=child_env(BIOM3D_DDP_DEBUG_DIR=str(debug)))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    runs = sorted((tmp / "runs").iterdir())
    return SimpleNamespace(runs=runs, run_dir=runs[0], debug=debug, output=proc.stdout + proc.stderr)

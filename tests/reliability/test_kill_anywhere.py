"""Issue 11, kill anywhere: SIGKILL `biom3d run` at ten seeded random points across preprocess, training and
prediction, re-run it each time; the final masks equal an uninterrupted run's and no temporary remains.

Each kill point is a milestone the process logs (``preprocess:``, ``training ...``, ``epoch N/3`` at an
epoch's end, ``predict: reading``) plus a seeded random delay shorter than what follows it, so the points
fall where they are meant to whatever the machine's speed: inside preprocessing's case writes; in training
before its first checkpoint, just after a checkpoint (the snapshot write, the next epoch) and in a resumed
epoch; in prediction before and between mask writes. Training and prediction kills cost a restart each
(interpreter, torch and torch._dynamo imports, about 5 s on two cores), which is what bounds their number.
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from tests.reliability.conftest import make_dataset

SEED = 20241201
EPOCH_END = r"epoch \d+/3  loss"  # the summary line an epoch's end logs, after its checkpoint
#: (regex of a milestone in stderr, earliest and latest delay after it, in seconds)
KILL_POINTS = [
    (r"preprocess: ", 0.0, 0.1),
    (r"preprocess: ", 0.0, 0.1),
    (r"preprocess: ", 0.0, 0.1),
    (r"training ", 0.0, 0.15),  # the first epoch, no checkpoint yet: the next run starts it again
    (EPOCH_END, 0.0, 0.2),  # just after a checkpoint: its snapshot, the next epoch
    (EPOCH_END + r"|predict: reading", 0.0, 0.2),  # the same in a resumed run
    (r"training |predict: reading", 0.0, 0.3),  # a resumed epoch, or prediction if training is done
    (r"predict: reading", 0.0, 0.3),
    (r"predict: reading", 0.0, 0.3),
    (r"predict: reading", 0.0, 0.3),
]
STAGES = {r"preprocess: ": "preprocess", r"training |" + EPOCH_END: "train", r"predict: reading": "predict"}


def _config(root: Path, data: Path) -> dict:
    """Three tiny epochs; the default callbacks less the curves (a matplotlib figure per epoch, 1 s each)."""
    fast_callbacks = [{"name": "core/lr-schedule"}, {"name": "core/checkpoint"}, {"name": "core/csv-log"},
                      {"name": "core/progress", "params": {"bar": False}}, {"name": "core/snapshots"}]
    return {
        "name": "killed", "runs_dir": str(root), "num_classes": 1,
        "data": {"images": str(data / "train" / "images"), "masks": str(data / "train" / "masks"),
                 "test_images": str(data / "test" / "images"), "test_masks": str(data / "test" / "masks")},
        "train": {"epochs": 3, "iters_per_epoch": 2, "batch_size": 1, "val_iters": 1, "workers": 0},
        "model": {"params": {"base_features": 2}},
        "predictor": {"params": {"tta": False}},
        "callbacks": fast_callbacks,
    }


def _attempt(config: Path, milestone: str, delay: float) -> str | None:
    """Start `biom3d run`; SIGKILL it ``delay`` s after ``milestone`` shows in its log. Returns the stage it
    was killed in (the last milestone seen), or None when it finished first."""
    proc = subprocess.Popen([sys.executable, "-m", "biom3d.cli", "run", str(config)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    log = bytearray()
    reader = threading.Thread(target=lambda: [log.extend(chunk) for chunk in iter(lambda: os.read(
        proc.stderr.fileno(), 4096), b"")], daemon=True)
    reader.start()
    deadline = time.monotonic() + 120
    pattern = re.compile(milestone.encode())
    while not pattern.search(log) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    time.sleep(delay)
    killed = proc.poll() is None
    if killed:
        proc.send_signal(signal.SIGKILL)
    proc.wait()
    reader.join(5)
    text = log.decode(errors="replace")
    assert killed or proc.returncode == 0, text[-3000:]
    if not killed:
        return None
    seen = [(match.start(), stage) for regex, stage in STAGES.items() for match in re.finditer(regex, text)]
    return max(seen)[1] if seen else "start"


def _masks(folder: Path) -> dict[str, np.ndarray]:
    import tifffile

    return {p.name: tifffile.imread(p) for p in sorted(folder.glob("*.tif"))}


def _losses(run_dir: Path) -> list[list[str]]:
    """log.csv without its time column."""
    rows = [line.split(",") for line in (run_dir / "log.csv").read_text(encoding="utf-8").splitlines()]
    keep = [i for i, name in enumerate(rows[0]) if name != "time"]
    return [[row[i] for i in keep] for row in rows]


def test_killed_anywhere_and_rerun_gives_the_uninterrupted_result(tmp_path):
    import yaml

    from biom3d.core.stages.run import run_pipeline

    start = time.perf_counter()
    data = make_dataset(tmp_path / "data", n_train=3, n_test=2)
    reference = run_pipeline(_config(tmp_path / "reference", data), progress=False)
    expected = _masks(reference.predictions)
    assert len(expected) == 2

    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(_config(tmp_path / "killed", data)), encoding="utf-8")
    rng = random.Random(SEED)
    stages = [_attempt(config, milestone, rng.uniform(low, high)) for milestone, low, high in KILL_POINTS]
    final = subprocess.run([sys.executable, "-m", "biom3d.cli", "run", str(config)], capture_output=True, text=True, encoding="utf-8", errors="replace",
                           timeout=120)
    assert final.returncode == 0, final.stderr[-3000:]

    folder = tmp_path / "killed" / "killed"
    got = _masks(folder / "predictions")
    assert got.keys() == expected.keys()
    for name, mask in expected.items():
        assert mask.any() and np.array_equal(got[name], mask), name  # masks that depend on the weights
    assert _losses(folder / "run") == _losses(reference.run_dir)  # and the training itself was the same
    assert not [p for p in folder.rglob("*") if ".tmp" in p.name]
    kills = [s for s in stages if s is not None]
    assert {"preprocess", "train", "predict"} <= set(kills) and kills.count("train") >= 3, stages
    assert len(kills) >= 8, stages
    print(f"\nkill-anywhere: {len(kills)} kills at {stages}, {time.perf_counter() - start:.1f} s in all")

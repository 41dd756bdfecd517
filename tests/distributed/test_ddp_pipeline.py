"""Issue 12: `biom3d run` under torchrun (two CPU ranks, gloo): rank 0 alone preprocesses, writes the pipeline
folder and evaluates; both ranks train one model and predict their share of the test images; the masks are those
of one process predicting with the same run, and a re-run in one process finds every stage done. `biom3d demo`
runs the same way."""

from __future__ import annotations

import json

import tifffile
import yaml

from tests.distributed.conftest import TRAIN, child_env, torchrun
from tests.e2e.conftest import make_dataset


def test_the_whole_pipeline_runs_on_two_ranks_and_a_rerun_finds_it_done(tmp_path):
    from biom3d.core.stages.predict import predict
    from biom3d.core.stages.run import run_pipeline

    data = make_dataset(tmp_path / "data", n_train=4, n_test=3)
    config = tmp_path / "pipeline.yaml"
    config.write_text(yaml.safe_dump({
        "name": "nuclei", "runs_dir": str(tmp_path / "runs"), "num_classes": 1,
        "data": {"images": str(data / "train" / "images"), "masks": str(data / "train" / "masks"),
                 "test_images": str(data / "test" / "images"), "test_masks": str(data / "test" / "masks")},
        "train": TRAIN, "model": {"params": {"base_features": 4}}}), encoding="utf-8")
    proc = torchrun(["run", str(config)], env=child_env(), timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]

    folder = tmp_path / "runs" / "nuclei"
    assert out.count("preprocess: ") >= 1 and out.count("rank 0 of 2: cpu on ") == 1
    assert out.count("rank 1 of 2: cpu on ") == 1 and out.count("predict: inputs, rank 0 of 2: 2 of 3 image(s)") == 1
    sessions = json.loads((folder / "run" / "distributed.json").read_text(encoding="utf-8"))["sessions"]
    assert [s["world_size"] for s in sessions] == [2]
    state = json.loads((folder / "pipeline.json").read_text(encoding="utf-8"))
    assert all(state[stage]["done"] for stage in ("preprocess", "train", "predict", "eval"))
    rows = (folder / "eval.csv").read_text(encoding="utf-8").splitlines()
    assert sum(line.startswith("case") for line in rows) == 3, rows  # every rank's masks were evaluated

    masks = {p.name: p.read_bytes() for p in (folder / "predictions").iterdir()}
    alone = predict([folder / "run"], data / "test" / "images", tmp_path / "alone", device="cpu", progress=False)
    assert masks == {p.name: p.read_bytes() for p in alone} and len(masks) == 3

    before = (folder / "run" / "checkpoints" / "best.pt").stat().st_mtime_ns
    result = run_pipeline(config, progress=False)  # one process: nothing to do again
    assert (folder / "run" / "checkpoints" / "best.pt").stat().st_mtime_ns == before
    assert result.report.mean("dice") == state["eval"]["mean_dice"]  # rank 0 evaluated what one process does


def test_the_demo_runs_on_two_ranks_and_rank_zero_alone_cuts_the_volume_and_reports(tmp_path):
    proc = torchrun(["demo", "--out", str(tmp_path), "--epochs", "1", "--iters-per-epoch", "2"],
                    env=child_env(CUDA_VISIBLE_DEVICES=""), timeout=600)  # the demo's device is auto
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert proc.stdout.count("held-out quadrant q3: Dice") == 1  # one report, from rank 0
    sessions = json.loads((tmp_path / "nuclei" / "run" / "distributed.json").read_text(encoding="utf-8"))["sessions"]
    assert [s["world_size"] for s in sessions] == [2]  # the demo's model was trained by both ranks
    pred = tifffile.imread(tmp_path / "nuclei" / "predictions" / "q3.tif")
    assert pred.shape == (60, 128, 128) and set(pred.ravel().tolist()) <= {0, 1}

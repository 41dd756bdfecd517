"""Issue 12: two ranks train one model with DDP (gloo, two CPU processes under torchrun); what they log is the
all-reduced mean of what each computed, only rank 0 writes, the checkpoint predicts in one process, shards of a
prediction give the bytes of one process, and a 2-rank run resumes in one process."""

from __future__ import annotations

import json
import logging
import shutil

import pytest
import torch

from tests.distributed.conftest import debug_records, log_rows


def _reduced(records: list[list[dict]], tag: str, name: str) -> list[float]:
    """Per epoch: sum over ranks of what each contributed to ``name`` / their counts."""
    per_rank = [[r["parts"][name] for r in rank if r.get("tag") == tag] for rank in records]
    assert len({len(p) for p in per_rank}) == 1, "the ranks took part in different numbers of reductions"
    out = []
    for contributions in zip(*per_rank, strict=True):
        total = sum(torch.tensor(s, dtype=torch.float64).sum().item() for s, _ in contributions)
        out.append(total / sum(c for _, c in contributions))
    return out


def test_two_ranks_log_the_all_reduced_mean_of_what_each_computed(ddp_run):
    records = [debug_records(ddp_run.debug, r) for r in range(2)]
    assert [rec[0]["event"] for rec in records] == ["joined", "joined"]
    assert {rec[0]["backend"] for rec in records} == {"gloo"}
    rows = log_rows(ddp_run.run_dir)
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    for key, tag, name in (("train_loss", "train", "train_loss"), ("val_loss", "val", "val_loss"),
                           ("val_dice", "val", "dice")):
        logged = [float(r[key]) for r in rows]
        assert logged == pytest.approx(_reduced(records, tag, name), rel=2e-5), key
    # the ranks trained on different patches (own seeds), so what they computed differs
    first = [next(r for r in rec if r.get("tag") == "train")["parts"]["train_loss"][0] for rec in records]
    assert first[0] != pytest.approx(first[1], rel=1e-4)


def test_rank_zero_alone_writes_one_run_folder_and_says_how_the_batch_is_split(ddp_run):
    assert len(ddp_run.runs) == 1  # both ranks trained in the folder rank 0 named
    out = ddp_run.output
    assert out.count("global batch 2 = 2 ranks x 1; learning rate 0.01 unchanged") == 1
    assert out.count("rank 0 of 2: cpu on ") == 1 and out.count("rank 1 of 2: cpu on ") == 1
    assert out.count("run folder: ") == 1
    record = json.loads((ddp_run.run_dir / "distributed.json").read_text(encoding="utf-8"))
    (session,) = record["sessions"]
    assert (session["world_size"], session["global_batch"], session["batch_per_rank"]) == (2, 2, 1)
    assert [r["seed"] for r in session["ranks"]] == [42, 1042]
    assert [r["device"] for r in session["ranks"]] == ["cpu", "cpu"]
    state = torch.load(ddp_run.run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert state["epoch"] == 1 and state["world_size"] == 2
    assert not any(k.startswith("module.") for k in state["model"])  # the network's own weights, not DDP's
    torch_rngs = [r["torch"] for r in state["rng_ranks"]]
    assert len(torch_rngs) == 2 and not torch.equal(*torch_rngs)  # each rank's own generator state


def test_the_checkpoint_predicts_in_one_process_and_shards_write_the_same_bytes(ddp_run, prepared, tmp_path,
                                                                              monkeypatch):
    from biom3d.core.stages.predict import predict

    def run(out: str, **kw) -> list:
        return predict([ddp_run.run_dir], prepared.test_images, tmp_path / out, device="cpu", progress=False, **kw)

    whole = {p.name: p.read_bytes() for p in run("one")}
    assert len(set(whole.values())) == 3  # three different masks: a mix-up of names would show
    shards = [run("shards", shard=(i, 2)) for i in range(2)]
    assert [len(s) for s in shards] == [2, 1]
    for rank in range(2):  # under torchrun's variables, each rank takes its share without --shard
        monkeypatch.setenv("WORLD_SIZE", "2")
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("LOCAL_RANK", str(rank))
        run("ranks")
    for folder in ("shards", "ranks"):
        written = {p.name: p.read_bytes() for p in (tmp_path / folder).iterdir()}
        assert written == whole, folder


def test_an_ensemble_splits_over_shards_and_ranks_into_the_bytes_of_one_process(ddp_run, prepared, tmp_path,
                                                                             monkeypatch):
    from biom3d.core.stages.predict import predict

    other = shutil.copytree(ddp_run.run_dir, tmp_path / "other")  # a second member: the same run, other weights
    generator = torch.Generator().manual_seed(0)
    for path in (other / "checkpoints").glob("*.pt"):
        state = torch.load(path, weights_only=True)
        state["model"] = {k: v + 0.2 * torch.randn(v.shape, generator=generator) if v.is_floating_point() else v
                          for k, v in state["model"].items()}
        torch.save(state, path)
    members = [ddp_run.run_dir, other]

    def run(out: str, runs=members, **kw) -> list:
        return predict(runs, prepared.test_images, tmp_path / out, device="cpu", progress=False, **kw)

    whole = {p.name: p.read_bytes() for p in run("one")}
    alone = {p.name: p.read_bytes() for p in run("first", runs=members[:1])}
    assert whole != alone  # the second member changes the masks: the ensemble is not one model
    for i in range(2):
        run("shards", shard=(i, 2))
    for rank in range(2):
        monkeypatch.setenv("WORLD_SIZE", "2")
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("LOCAL_RANK", str(rank))
        run("ranks")
    for folder in ("shards", "ranks"):
        assert {p.name: p.read_bytes() for p in (tmp_path / folder).iterdir()} == whole, folder


def test_a_two_rank_run_resumes_in_one_process_with_a_note(ddp_run, tmp_path):
    from biom3d.core.builder import Builder

    run_dir = shutil.copytree(ddp_run.run_dir, tmp_path / "run")
    logger, seen = logging.getLogger("biom3d"), []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        Builder.resume(run_dir, epochs=3)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert any("trained with 2 rank(s) and resumes with 1: the global batch stays 2" in m for m in seen), seen
    before, after = log_rows(ddp_run.run_dir), log_rows(run_dir)
    assert [int(r["epoch"]) for r in after] == [0, 1, 2] and after[:2] == before
    sessions = json.loads((run_dir / "distributed.json").read_text(encoding="utf-8"))["sessions"]
    assert [(s["world_size"], s["from_epoch"]) for s in sessions] == [(2, 0), (1, 2)]
    assert torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["epoch"] == 2

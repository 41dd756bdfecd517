"""Issue 15: `train.compile` runs the training forward through torch.compile (the same numbers as eager, the
network's own weights in the checkpoint), and a platform that cannot compile trains eagerly with a warning,
from the very step that failed, to the same result."""

from __future__ import annotations

import csv
import logging

import pytest
import torch

from tests.e2e.conftest import TINY

QUICK = {**TINY, "train.epochs": 2, "train.iters_per_epoch": 3}


def _train(prepared, tmp_path, name: str, **overrides):
    from biom3d.core.builder import Builder

    result = Builder(prepared.config_path, overrides={**QUICK, **overrides}).train(runs_dir=tmp_path / name)
    with open(result.run_dir / "log.csv", encoding="utf-8", newline="") as f:
        losses = [float(row["train_loss"]) for row in csv.DictReader(f)]
    return result.run_dir, losses


@pytest.fixture(scope="module")
def eager(prepared, tmp_path_factory):
    return _train(prepared, tmp_path_factory.mktemp("eager"), "eager")


def test_compiled_training_runs_the_compiled_graph_and_matches_eager(prepared, eager, tmp_path, monkeypatch):
    from torch._dynamo.testing import CompileCounter

    real, counter = torch.compile, CompileCounter()
    # dynamo traces into a real compiled module, without inductor's C++ build: seconds (the benchmark uses inductor)
    monkeypatch.setattr(torch, "compile", lambda model: real(model, backend=counter))
    run_dir, losses = _train(prepared, tmp_path, "compiled", **{"train.compile": True})
    assert counter.frame_count >= 1 and counter.op_count > 0  # the training forward went through dynamo
    assert losses == pytest.approx(eager[1], rel=1e-5)
    state = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert not any(k.startswith(("_orig_mod.", "module.")) for k in state["model"])  # loads where nothing compiles


def test_a_failing_compile_warns_and_repeats_the_step_eagerly(prepared, eager, tmp_path, monkeypatch, caplog):
    from torch._dynamo.exc import BackendCompilerFailed

    def broken_backend(model):
        def forward(*args):
            raise BackendCompilerFailed(lambda *a: None, RuntimeError("no C++ compiler found"), None)

        return forward

    monkeypatch.setattr(torch, "compile", broken_backend)
    with caplog.at_level(logging.WARNING, logger="biom3d"):
        _, losses = _train(prepared, tmp_path, "fallback", **{"train.compile": True})
    warned = [r.getMessage() for r in caplog.records if "train.compile" in r.getMessage()]
    assert len(warned) == 1 and "cannot compile this network here" in warned[0] and "no C++ compiler" in warned[0]
    assert losses == pytest.approx(eager[1], rel=1e-6)  # the failed step was taken again, not skipped


def test_a_platform_without_torch_compile_trains_eagerly_with_a_message(prepared, eager, tmp_path, monkeypatch,
                                                                      caplog):
    def refused(model):
        raise RuntimeError("torch.compile is not supported on Python 3.99+")

    monkeypatch.setattr(torch, "compile", refused)
    with caplog.at_level(logging.WARNING, logger="biom3d"):
        _, losses = _train(prepared, tmp_path, "refused", **{"train.compile": True})
    assert any("torch.compile is not available here (RuntimeError: torch.compile is not supported on Python 3.99+)"
               in r.getMessage() for r in caplog.records)
    assert losses == pytest.approx(eager[1], rel=1e-6)


def test_a_model_error_under_compile_is_the_models_not_a_fallback():
    from biom3d.core.compiling import is_compile_failure

    try:
        try:
            raise ValueError("shapes do not match")
        except ValueError as inner:
            raise RuntimeError("while tracing") from inner
    except RuntimeError as exc:
        assert not is_compile_failure(exc)
    from torch._dynamo.exc import BackendCompilerFailed

    assert is_compile_failure(BackendCompilerFailed(lambda *a: None, RuntimeError("x"), None))

"""Issue 12, without processes: how work is split between ranks (batch, dataset items, prediction inputs) and
what `biom3d train --devices/--gpus` launches (torchrun's own launcher, parsed with torchrun's own parser)."""

from __future__ import annotations

import os
import sys

import pytest

from biom3d.core import distributed, launcher
from biom3d.core.distributed import World
from biom3d.core.errors import ConfigError, InputError


@pytest.mark.parametrize(("batch", "size"), [(2, 1), (2, 2), (4, 2), (6, 3), (8, 4)])
def test_each_rank_loads_its_slots_of_every_global_batch(batch, size):
    steps = 3
    shares = [distributed.rank_indices(steps * batch, batch, World(r, r, size)) for r in range(size)]
    assert sorted(i for share in shares for i in share) == list(range(steps * batch))  # the one-process items
    b = batch // size
    for r, share in enumerate(shares):
        assert len(share) == steps * b
        for k, index in enumerate(share):  # k-th item of the rank's loader: step k // b, slot r*b + k % b
            assert divmod(index, batch) == (k // b, r * b + k % b)


def test_the_global_batch_must_split_evenly():
    assert distributed.local_batch(8, World(0, 0, 4)) == 2
    with pytest.raises(ConfigError, match=r"train.batch_size: 6 is the global batch.*multiple of 4 \(e.g. 4\)"):
        distributed.local_batch(6, World(0, 0, 4))


def test_rank_seeds_leave_rank_zero_as_one_process():
    assert [distributed.rank_seed(42, r) for r in range(3)] == [42, 1042, 2042]
    assert distributed.rank_seed(None, 1) is None


@pytest.mark.parametrize("n", [0, 1, 2, 5, 7])
@pytest.mark.parametrize("parts", [1, 2, 3])
@pytest.mark.parametrize("size", [1, 2])
def test_prediction_shares_cover_every_input_once(n, parts, size):
    items = [f"case{i}" for i in range(n)]
    shares = [distributed.shard(items, (i, parts), World(r, r, size)) for i in range(parts) for r in range(size)]
    assert sorted(x for s in shares for x in s) == items
    assert max(map(len, shares)) - min(map(len, shares)) <= 1


@pytest.mark.parametrize("text", ["4/4", "-1/2", "a/b", "1", "1/0", ""])
def test_a_bad_shard_says_the_form(text):
    with pytest.raises(InputError, match=r"give I/N with 0 <= I < N"):
        distributed.parse_shard(text)


def test_environment_describes_the_world(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert distributed.current() == World(3, 1, 4) and not distributed.is_main()
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(InputError, match="RANK 4 does not fit WORLD_SIZE 4"):
        distributed.current()


@pytest.fixture
def launched(monkeypatch):
    """`biom3d ...` run in-process with 4 fake GPUs: the command it would exec (none: it went on in-process)."""
    import torch

    import biom3d.cli.train_cmd
    from biom3d.cli.app import main

    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    seen: dict = {}

    def fake_exec(command):
        seen["exec"] = command
        raise SystemExit(0)  # exec never returns

    monkeypatch.setattr(launcher, "_exec", fake_exec)
    monkeypatch.setattr(biom3d.cli.train_cmd, "train", lambda config, **kw: seen.setdefault("train", (config, kw)))

    def run(*argv: str) -> dict:
        seen.clear()
        seen["code"] = main(list(argv))
        return dict(seen)

    return run


def test_devices_exec_torchruns_own_launcher_with_the_same_command(launched, tmp_path):
    from torch.distributed.run import get_args_parser

    seen = launched("--debug", "train", "c.yaml", "--devices", "2,3", "--epochs", "3", "--batch-size=4")
    command = seen["exec"]
    assert command[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "2,3"
    args = get_args_parser().parse_args(command[3:])
    assert (args.standalone, args.nproc_per_node, args.module, args.training_script) == (True, "2", True, "biom3d.cli")
    assert args.training_script_args == ["--debug", "train", "c.yaml", "--epochs", "3", "--batch-size=4"]
    # what each rank then runs parses with the real command, without the launch flags
    captured = launched(*args.training_script_args)
    assert captured["code"] == 0 and "exec" not in captured
    assert captured["train"][1]["overrides"] == {"train.epochs": 3, "train.batch_size": 4}

    assert get_args_parser().parse_args(launched("train", "c.yaml", "--gpus=3")["exec"][3:]).nproc_per_node == "3"


def test_one_gpu_needs_no_launcher_and_bad_requests_are_refused(launched, monkeypatch, capsys):
    import torch

    seen = launched("train", "c.yaml", "--gpus", "1")
    assert "exec" not in seen and seen["train"][0].name == "c.yaml"
    for argv, message in [(["--gpus", "5"], "--gpus 5: only 4 GPU"), (["--devices", "0,0"], "distinct GPU numbers"),
                          (["--devices", "0", "--gpus", "2"], "not both")]:
        assert launched("train", "c.yaml", *argv)["code"] == 2
        assert message in capsys.readouterr().err
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert launched("train", "c.yaml", "--gpus", "2")["code"] == 2
    assert "CUDA is not available here; for several CPU processes use torchrun" in capsys.readouterr().err
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert launched("train", "c.yaml", "--gpus", "2")["code"] == 2
    assert "already runs under a launcher" in capsys.readouterr().err


def test_the_pipeline_launches_under_torchrun_like_train_and_the_cpu_hint_names_its_command(launched, monkeypatch,
                                                                                          capsys):
    import torch
    from torch.distributed.run import get_args_parser

    args = get_args_parser().parse_args(launched("run", "c.yaml", "--devices", "0,1", "--epochs", "2")["exec"][3:])
    assert (args.nproc_per_node, args.training_script_args) == ("2", ["run", "c.yaml", "--epochs", "2"])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert launched("run", "c.yaml", "--gpus", "2")["code"] == 2
    assert "torchrun --standalone --nproc_per_node=2 -m biom3d.cli run c.yaml (see" in capsys.readouterr().err

"""docs/distributed.md is checked as written: every block is valid bash, every torchrun command line parses
with torchrun's own parser and runs `-m biom3d.cli`, every biom3d command line (after torchrun's, or alone)
parses with the real CLI (its stages replaced by recorders), and the recipes are consistent: the global batch
splits over the processes they start, and a job array's task ids are the --shard parts."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.fenced import fenced_blocks

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "distributed.md"
#: values for the shell variables the recipes use
SAMPLE = {"SLURM_NNODES": "2", "SLURM_JOB_ID": "4242", "head": "node1", "SLURM_ARRAY_TASK_ID": "3"}


def blocks() -> list[tuple[int, str, str]]:
    """(line, language, text) of each fenced block."""
    return fenced_blocks(GUIDE)


def command_lines() -> list[tuple[int, str, list[str]]]:
    """(line, block text, argv) of every command line, continuations joined, variables given sample values,
    leading variable assignments and `srun` dropped."""
    out = []
    for line, _, body in blocks():
        for cmd in re.sub(r"\\\n\s*", "", body).splitlines():
            if not cmd.strip() or cmd.lstrip().startswith("#") or re.match(r"^\w+=\$\(", cmd) or \
                    cmd.startswith("export "):
                continue
            argv = [re.sub(r"\$\{?(\w+)\}?", lambda m: SAMPLE[m[1]], a) for a in shlex.split(cmd)]
            while argv and (re.match(r"^\w+=", argv[0]) or argv[0] == "srun"):
                argv = argv[1:]
            out.append((line, body, argv))
    return out


@pytest.fixture
def recorded(monkeypatch):
    """What the commands hand to their stages, instead of training or predicting."""
    import biom3d.cli.demo
    import biom3d.cli.predict_cmd
    import biom3d.cli.run_cmd
    import biom3d.cli.train_cmd
    from biom3d.core import launcher

    calls: list[tuple[str, dict]] = []
    monkeypatch.setattr(biom3d.cli.train_cmd, "train", lambda config, **kw: calls.append(("train", kw)))
    monkeypatch.setattr(biom3d.cli.run_cmd, "run", lambda config, **kw: calls.append(("run", kw)))
    monkeypatch.setattr(biom3d.cli.predict_cmd, "predict", lambda *a, **kw: calls.append(("predict", kw)))
    monkeypatch.setattr(biom3d.cli.demo, "run_demo", lambda out, **kw: calls.append(("demo", kw)))
    monkeypatch.setattr(launcher, "launch", lambda argv, **kw: calls.append(("launch", kw)))
    return calls


def test_every_block_is_valid_bash():
    assert blocks() and {lang for _, lang, _ in blocks()} == {"bash"}
    for line, _, body in blocks():
        proc = subprocess.run(["bash", "-n"], input=body, capture_output=True, text=True, encoding="utf-8",
                              errors="replace", timeout=30)
        assert proc.returncode == 0, f"docs/distributed.md:{line}: {proc.stderr}"


def test_every_command_line_parses_with_torchrun_and_the_real_cli(recorded):
    from torch.distributed.run import get_args_parser

    from biom3d.cli.app import app
    from biom3d.core.distributed import parse_shard

    lines = command_lines()
    programs = [argv[0] for _, _, argv in lines]
    assert set(programs) == {"torchrun", "biom3d"} and programs.count("torchrun") >= 6
    for line, body, argv in lines:
        where = f"docs/distributed.md:{line}: {shlex.join(argv)}"
        processes = 1
        if argv[0] == "torchrun":
            args = get_args_parser().parse_args(argv[1:])
            assert args.module and args.training_script == "biom3d.cli", where
            nodes = int(str(args.nnodes).split(":")[-1])
            assert nodes == 1 if args.standalone else nodes >= 2, where
            processes = nodes * int(args.nproc_per_node)
            argv = ["biom3d", *args.training_script_args]
        recorded.clear()
        result = CliRunner().invoke(app, argv[1:])
        assert result.exit_code == 0, f"{where}: {result.output}"
        (kind, options), = [c for c in recorded if c[0] != "launch"]
        launched = [c[1] for c in recorded if c[0] == "launch"]
        if launched:
            processes = int(launched[0]["gpus"] or len(launched[0]["devices"].split(",")))
        batch = options.get("overrides", {}).get("train.batch_size")
        if batch is not None:
            assert batch % processes == 0, f"{where}: global batch {batch} over {processes} processes"
        if options.get("shard"):
            index, count = parse_shard(options["shard"])
            array = re.search(r"#SBATCH --array=(\d+)-(\d+)", body)
            assert array and (int(array[1]), int(array[2]) + 1) == (0, count), where


def test_the_recipes_cover_what_the_issue_asks_for():
    text = GUIDE.read_text(encoding="utf-8")
    torchruns = [argv for _, _, argv in command_lines() if argv[0] == "torchrun"]
    assert any("--nnodes=2" in argv for argv in torchruns)  # two machines
    assert any("--max-restarts=2" in argv or "--max-restarts=3" in argv for argv in torchruns)
    assert "srun torchrun" in text and "#SBATCH --array=" in text and "--shard" in text
    assert any(argv[0] == "torchrun" and "run" in argv for _, _, argv in command_lines())  # the whole pipeline
    assert re.search(r"train.batch_size. is the \*\*global\*\* batch", text)
    assert "learning rate is unchanged" in text.lower().replace("**", "")


def test_the_documented_timeout_default_is_the_configs():
    from biom3d.core.config import TrainConfig

    text = GUIDE.read_text(encoding="utf-8")
    assert f"default {TrainConfig().ddp_timeout:g}" in text

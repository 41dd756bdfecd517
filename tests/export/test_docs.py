"""docs/export.md is exercised as written: its ``bash run`` block runs in a scratch folder holding a tiny trained
run (``RUN``) and test images, with the real ``biom3d`` command; what it writes is what the ``text`` block
lists; the validation one-liner prints ``valid-format``; every other bash block is valid bash."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fenced import fenced_blocks

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "export.md"
LANGUAGES = {"bash", "text"}


def blocks() -> list[tuple[int, str, str]]:
    """(line, info string, text) of each fenced block."""
    return fenced_blocks(GUIDE)


def _bash(script: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=cwd, env=env, capture_output=True,
                          text=True, encoding="utf-8", errors="replace", timeout=600)


def test_every_block_is_of_a_kind_this_test_checks():
    kinds = {info.split()[0] for _, info, _ in blocks()}
    assert kinds <= LANGUAGES and [info for _, info, _ in blocks()].count("bash run") == 1


def test_bash_blocks_are_valid_bash():
    for line, info, body in blocks():
        if info.startswith("bash"):
            proc = subprocess.run(["bash", "-n"], input=body, capture_output=True, text=True, encoding="utf-8",
                                  errors="replace", timeout=30)
            assert proc.returncode == 0, f"docs/export.md:{line}: {proc.stderr}"


@pytest.mark.skipif(shutil.which("biom3d", path=str(Path(sys.executable).parent)) is None,
                    reason="the biom3d command (biom3d-cli) is not installed beside this python")
def test_the_guide_runs_as_written(run_dir, data, tmp_path):
    shutil.copytree(run_dir, tmp_path / "RUN")
    shutil.copytree(data / "test" / "images", tmp_path / "images")
    (line, _, script), = [b for b in blocks() if b[1] == "bash run"]
    done = _bash(script, tmp_path)
    assert done.returncode == 0, f"docs/export.md:{line}: {done.stdout[-3000:]}{done.stderr[-3000:]}"

    listed = [row.split()[0] for _, info, body in blocks() if info == "text" for row in body.splitlines() if row]
    for name in listed:
        assert (tmp_path / name).is_file(), f"docs/export.md lists {name}, not written"
    assert sorted(p.name for p in (tmp_path / "exports").iterdir()) == sorted(
        Path(n).name for n in listed if n.startswith("exports/"))
    inputs = sorted(p.name for p in (tmp_path / "images").iterdir())
    for folder in ("masks-bioimageio", "masks-onnx"):
        assert sorted(p.name for p in (tmp_path / folder).iterdir()) == inputs

    (line, _, check), = [b for b in blocks() if "load_description" in b[2]]
    done = _bash(check, tmp_path)
    assert done.returncode == 0 and done.stdout.strip().splitlines()[-1] == "valid-format", (
        f"docs/export.md:{line}: {done.stdout[-2000:]}{done.stderr[-2000:]}")

"""docs/plugins.md, the plugin author's guide, is exercised as written.

- its ``file=`` blocks are a distribution (biom3d-tinyseg): extracted as written, pip-installed, and its ``bash
  run`` block is run on a generated ``.tiny`` dataset: preprocess -> train -> predict -> eval;
- every other block is run (python, pytest tests), validated (yaml configs), parsed (toml) or syntax-checked
  (bash); ``text`` blocks are output and listings;
- examples/biom3d-tinyseg holds exactly those files, byte for byte, so the guide cannot drift from the example;
- a hook or a protocol added to the core without being documented here fails a test.
"""

from __future__ import annotations

import ast
import inspect
import json
import os
import re
import shlex
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "docs" / "plugins.md"
EXAMPLE = ROOT / "examples" / "biom3d-tinyseg"
README = ROOT / "README.md"
#: files of the example that are not in the guide
EXAMPLE_EXTRA = {"README.md"}
#: info-string flags each language accepts (``file=`` aside)
FLAGS = {"python": set(), "yaml": {"invalid"}, "toml": set(), "bash": {"run"}, "text": set()}
CALLBACK_OUTPUT = "tinyseg-epochs.jsonl"  # EpochLogParams.filename's default in plugin.py
SHAPE, TRAIN_CASES, TEST_CASES = (16, 32, 32), 3, 1

GENERATE = r"""
import sys
from pathlib import Path

import numpy as np

from biom3d_tinyseg.tinyfile import write_tiny

root, shape = Path(sys.argv[1]), tuple(int(s) for s in sys.argv[2].split(","))
rng = np.random.default_rng(0)
for split, n in (("train", int(sys.argv[3])), ("test", int(sys.argv[4]))):
    for i in range(n):  # a bright cube on noise
        mask = np.zeros(shape, np.uint8)
        side = rng.integers(6, 10, size=3)
        lo = [int(rng.integers(0, s - d)) for s, d in zip(shape, side)]
        mask[tuple(slice(a, a + d) for a, d in zip(lo, side))] = 1
        image = (mask + rng.normal(0, 0.25, shape)).astype(np.float32)
        write_tiny(root / split / "images" / f"case{i}.tiny", image, spacing=(2.0, 0.5, 0.5))
        write_tiny(root / split / "masks" / f"case{i}.tiny", mask, spacing=(2.0, 0.5, 0.5))
"""

# every python block in a fresh namespace of one interpreter (torch is imported once); the first failure is
# reported with the block's line in the guide
RUN_BLOCKS = r"""
import json, sys, traceback
blocks = json.load(open(sys.argv[1]))
for line, code in blocks:
    try:
        exec(compile(code, f"docs/plugins.md:{line}", "exec"), {"__name__": f"block_{line}"})
    except BaseException:
        traceback.print_exc()
        print(f"FAILED: the python block at docs/plugins.md:{line}", file=sys.stderr)
        sys.exit(1)
print(f"ran {len(blocks)} block(s)")
"""

VALIDATE_BLOCKS = r"""
import json, sys
import yaml
from biom3d.core.config import validate
from biom3d.core.errors import ConfigError
failures = []
for line, text, invalid in json.load(open(sys.argv[1])):
    raw = yaml.safe_load(text)
    try:
        validate(raw)
    except ConfigError as exc:
        if not invalid:
            failures.append(f"docs/plugins.md:{line}: {exc}")
        elif not all(p.path.split(".")[0].split("[")[0] in raw for p in exc.problems):
            failures.append(f"docs/plugins.md:{line}: refused, but not for a key it sets: {exc}")
    else:
        if invalid:
            failures.append(f"docs/plugins.md:{line}: shown as invalid, but validates")
print("\n".join(failures) or "ok")
sys.exit(1 if failures else 0)
"""


@dataclass
class Block:
    line: int  # of the opening fence, 1-based
    lang: str
    flags: set[str] = field(default_factory=set)
    file: str | None = None
    text: str = ""

    @property
    def is_pytest(self) -> bool:
        return self.lang == "python" and "biom3d_plugins" in self.text and re.search(r"^def test_", self.text, re.M)


def parse_blocks(markdown: str) -> list[Block]:
    """Fenced code blocks (also indented ones, in lists), their info string and exact text."""
    blocks: list[Block] = []
    lines = markdown.splitlines(keepends=True)
    i = 0
    while i < len(lines):
        opening = re.match(r"^( *)(`{3,})(.*)$", lines[i].rstrip("\n"))
        if not opening:
            i += 1
            continue
        indent, fence, info = len(opening[1]), opening[2], opening[3].split()
        block = Block(line=i + 1, lang=info[0] if info else "")
        for word in info[1:]:
            if word.startswith("file="):
                block.file = word.removeprefix("file=")
            else:
                block.flags.add(word)
        body = []
        i += 1
        while i < len(lines) and lines[i].strip() != fence:
            body.append(lines[i][indent:] if lines[i][:indent].strip() == "" else lines[i])
            i += 1
        if i == len(lines):
            raise AssertionError(f"docs/plugins.md:{block.line}: unclosed code block")
        block.text = "".join(body)
        blocks.append(block)
        i += 1
    return blocks


BLOCKS = parse_blocks(GUIDE.read_text(encoding="utf-8"))
FILE_BLOCKS = [b for b in BLOCKS if b.file]
(RUN_BLOCK,) = [b for b in BLOCKS if b.lang == "bash" and "run" in b.flags] or [None]


def _env(site: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BIOM3D_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(site), env.get("PYTHONPATH", "")) if p)
    env["PATH"] = os.pathsep.join((str(Path(sys.executable).parent), env.get("PATH", "")))  # the venv's biom3d
    env.update(extra)
    return env


def _python(args: list[str], site: Path, *, cwd: Path, timeout: int = 300, **env: str):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, encoding="utf-8",
                          env=_env(site, **env), cwd=cwd, timeout=timeout)


# -- the page itself (fast) ---------------------------------------------------------------------------------
def test_every_block_is_of_a_known_kind():
    assert len(FILE_BLOCKS) >= 8 and RUN_BLOCK is not None, "the guide's distribution or its run block is missing"
    for b in BLOCKS:
        assert b.lang in FLAGS, f"docs/plugins.md:{b.line}: block language {b.lang!r}: the test cannot check it"
        assert b.flags <= FLAGS[b.lang], f"docs/plugins.md:{b.line}: unknown flags {sorted(b.flags - FLAGS[b.lang])}"
        if b.file:
            assert not b.flags and b.lang != "text", f"docs/plugins.md:{b.line}: a file block takes no flag"
    files = [b.file for b in FILE_BLOCKS]
    assert len(files) == len(set(files)), "a file is given twice"
    assert [b for b in BLOCKS if "run" in b.flags] == [RUN_BLOCK], "exactly one `bash run` block"


def test_every_hook_protocol_and_spec_record_is_documented():
    from biom3d.core import hookspecs, protocols
    from biom3d.core.specs import KINDS

    guide = GUIDE.read_text(encoding="utf-8")
    code = " ".join(re.findall(r"`[^`\n]+`", guide))  # inline code spans
    hooks = [n for n, f in vars(hookspecs).items() if n.startswith("biom3d_") and callable(f)]
    classes = [n for n, c in inspect.getmembers(protocols, inspect.isclass)
               if c.__module__ == protocols.__name__ and not n.startswith("_")]
    specs = [k.spec.__name__ for k in KINDS.values()]
    assert len(hooks) == len(KINDS) and {"Reader", "Writer", "Callback", "TrainJob"} <= set(classes)
    missing = [n for n in hooks + classes + specs if not re.search(rf"\b{re.escape(n)}\b", code)]
    assert not missing, f"docs/plugins.md does not document {missing} (name each in `code`, with what it does)"


def test_the_readme_points_to_the_guide():
    section = README.read_text(encoding="utf-8").partition("## Writing a plugin")[2].partition("\n## ")[0]
    assert "docs/plugins.md" in section


def test_the_example_distribution_is_the_guide_byte_for_byte():
    for b in FILE_BLOCKS:
        path = EXAMPLE / b.file
        assert path.is_file(), f"docs/plugins.md:{b.line}: {b.file} is not in examples/biom3d-tinyseg"
        assert path.read_bytes() == b.text.encode("utf-8"), \
            f"docs/plugins.md:{b.line}: {b.file} differs from examples/biom3d-tinyseg/{b.file}"
    present = {p.relative_to(EXAMPLE).as_posix() for p in EXAMPLE.rglob("*")
               if p.is_file() and "__pycache__" not in p.parts and not p.name.endswith(".pyc")}
    assert present - EXAMPLE_EXTRA == {b.file for b in FILE_BLOCKS}, "the example and the guide hold other files"


def test_toml_blocks_parse_and_bash_blocks_are_valid_bash():
    for b in BLOCKS:
        if b.lang == "toml":
            tomllib.loads(b.text)
        elif b.lang == "bash":
            proc = subprocess.run(["bash", "-n"], input=b.text, capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=30)
            assert proc.returncode == 0, f"docs/plugins.md:{b.line}: {proc.stderr}"
    project = tomllib.loads(next(b.text for b in FILE_BLOCKS if b.file == "pyproject.toml"))
    assert "biom3d-core>=0.1,<0.2" in project["project"]["dependencies"]
    assert project["project"]["entry-points"]["biom3d.plugins"] == {"tinyseg": "biom3d_tinyseg.plugin"}


# -- the distribution, installed as written -----------------------------------------------------------------
@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, Path]:
    """(the folder the file blocks were extracted to, the --target it was pip-installed into)."""
    dist, site = tmp_path_factory.mktemp("tinyseg-dist"), tmp_path_factory.mktemp("tinyseg-site")
    for b in FILE_BLOCKS:
        path = dist / b.file
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b.text.encode("utf-8"))
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                           "--no-compile", "--target", str(site), str(dist)],
                          capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=300)
    assert proc.returncode == 0, f"the guide's distribution does not install as written:\n{proc.stderr[-4000:]}"
    return dist, site


def test_the_guide_walk_runs_end_to_end(installed, tmp_path):
    dist, site = installed
    data = tmp_path / "data"
    clock = time.perf_counter()
    proc = _python(["-c", GENERATE, str(data), ",".join(map(str, SHAPE)), str(TRAIN_CASES), str(TEST_CASES)], site,
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    script = tmp_path / "run.sh"
    script.write_text(RUN_BLOCK.text, encoding="utf-8")
    proc = subprocess.run(["bash", "-euo", "pipefail", str(script)], capture_output=True, text=True, encoding="utf-8", errors="replace",
                           env=_env(site, DATA=str(data)), cwd=dist, timeout=600)
    took = time.perf_counter() - clock
    assert proc.returncode == 0, (f"the run block (docs/plugins.md:{RUN_BLOCK.line}) failed:\n{proc.stdout[-3000:]}\n"
                                  f"{proc.stderr[-6000:]}")
    print(f"guide walk: {took:.1f} s")

    config = yaml.safe_load((dist / "config.yaml").read_text(encoding="utf-8"))
    folder = dist / config["runs_dir"] / config["name"]
    predictions = sorted((folder / "predictions").iterdir())
    assert [p.name for p in predictions] == [f"case{i}.tiny" for i in range(TEST_CASES)]
    assert all(p.read_bytes()[:4] == b"TINY" for p in predictions), "predictions are not .tiny files"
    rows = (folder / "eval.csv").read_text(encoding="utf-8").splitlines()
    assert rows[0] == "file,class,dice,iou" and any(r.startswith("mean,all,") for r in rows), rows
    lines = [json.loads(x) for x in (folder / "run" / CALLBACK_OUTPUT).read_text(encoding="utf-8").splitlines()]
    epochs = config["train"]["epochs"]
    assert [x["epoch"] for x in lines] == list(range(epochs)), "callback epochs are counted from 0"
    assert lines[0]["shown_as"] == f"1/{epochs}" and lines[0]["batches"] == config["train"]["iters_per_epoch"]
    run_config = yaml.safe_load((folder / "run" / "config.yaml").read_text(encoding="utf-8"))
    assert run_config["stack"] == "tinyseg/tiny" and run_config["model"]["name"] == "tinyseg/tiny-convnet"
    assert run_config["reader"] is None and run_config["writer"] is None  # chosen by suffix
    callbacks = [c["name"] for c in run_config["callbacks"]]
    assert "tinyseg/epoch-log" in callbacks and "core/checkpoint" in callbacks and "core/snapshots" not in callbacks
    assert [p["name"] for p in run_config["postprocessors"]] == ["core/discretize", "tinyseg/min-volume"]
    plugins = json.loads((folder / "run" / "plugins.json").read_text(encoding="utf-8"))
    assert plugins["used"]["tinyseg"]["dist"] == "biom3d-tinyseg"
    assert {p.name for p in (folder / "run" / "checkpoints").iterdir()} >= {"last.pt", "best.pt"}
    assert [p.name for p in sorted((dist / "preds-npy").iterdir())] == ["case0.npy", "eval.csv"]  # --writer io/npy
    assert "tinyseg" in proc.stdout and "mean Dice" in proc.stdout


def test_python_blocks_run(installed, tmp_path):
    _, site = installed
    blocks = [(b.line, b.text) for b in BLOCKS if b.lang == "python" and not b.file and not b.is_pytest]
    assert len(blocks) >= 5
    listing = tmp_path / "blocks.json"
    listing.write_text(json.dumps(blocks), encoding="utf-8")
    proc = _python(["-c", RUN_BLOCKS, str(listing)], site, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-6000:]
    for b in BLOCKS:  # the file blocks that are modules compile (the end-to-end test imports them)
        if b.lang == "python" and b.file:
            compile(b.text, b.file, "exec")
    # what discovery imports stays light: no torch or numpy at the top of plugin.py
    tree = ast.parse(next(b.text for b in FILE_BLOCKS if b.file.endswith("/plugin.py")))
    top = {a.name.split(".")[0] for n in tree.body if isinstance(n, ast.Import) for a in n.names}
    top |= {n.module.split(".")[0] for n in tree.body if isinstance(n, ast.ImportFrom) and n.module}
    assert not top & {"torch", "numpy"}, top


def test_pytest_blocks_pass(installed, tmp_path):
    dist, site = installed
    targets = []
    for b in BLOCKS:
        if b.is_pytest:
            path = dist / b.file if b.file else tmp_path / f"test_block_{b.line}.py"
            if not b.file:
                path.write_text(b.text, encoding="utf-8")
            targets.append(str(path))
    assert targets, "the guide shows no test using the biom3d_plugins fixture"
    proc = _python(["-m", "pytest", "-q", "-p", "no:cacheprovider", *targets], site, cwd=dist)
    assert proc.returncode == 0, f"pytest {shlex.join(targets)}:\n{proc.stdout[-6000:]}{proc.stderr[-2000:]}"
    assert " passed" in proc.stdout


def test_yaml_blocks_are_valid_configs(installed, tmp_path):
    _, site = installed
    blocks = [(b.line, b.text, "invalid" in b.flags) for b in BLOCKS if b.lang == "yaml" and not b.file]
    assert blocks
    listing = tmp_path / "blocks.json"
    listing.write_text(json.dumps(blocks), encoding="utf-8")
    proc = _python(["-c", VALIDATE_BLOCKS, str(listing)], site, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]

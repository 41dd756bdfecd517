"""Protocols are the contract: a third-party distribution whose every component is written against
``biom3d.core.protocols`` and ``biom3d.core.specs`` alone (tests/fixtures/contract_dist) is really pip-installed
and runs preprocess -> train -> predict -> eval, through the Python API and through `biom3d run`."""

from __future__ import annotations

import ast
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.cli.helpers import run_cli

ROOT = Path(__file__).resolve().parents[2]
DIST = ROOT / "tests" / "fixtures" / "contract_dist"
SOURCES = DIST / "src" / "biom3d_contract"
#: what the distribution may import of biom3d: the contract, and the types and errors it names
ALLOWED = {"biom3d.core.protocols", "biom3d.core.specs", "biom3d.core.hookspecs", "biom3d.core.imagedata",
           "biom3d.core.errors"}
ALLOWED_FROM_CORE = {"hookimpl", "hookspec"}
IDS = {"preprocessor": "contract/zscore", "dataset": "contract/crops", "model": "contract/two-conv",
       "loss": "contract/dice-ce", "trainer": "contract/loop", "predictor": "contract/whole",
       "reader": "contract/tny", "writer": "contract/tny"}
SHAPE = (16, 32, 32)
SPACING = (2.0, 0.5, 0.5)
# small, but enough steps for the two-layer net to find the cube (Dice > 0.5 on held-out volumes)
TRAIN = {"epochs": 2, "iters_per_epoch": 8, "val_iters": 1, "workers": 0, "optimizer": "adam", "lr": 0.02}

GENERATE = r"""
import sys
from pathlib import Path
import numpy as np
from biom3d_contract.tny import write_tny

root, shape, spacing = Path(sys.argv[1]), tuple(int(s) for s in sys.argv[2].split(",")), (2.0, 0.5, 0.5)
rng = np.random.default_rng(0)
for split, n in (("train", 4), ("test", 2)):
    for i in range(n):
        mask = np.zeros(shape, np.uint8)
        side = rng.integers(6, 10, size=3)
        lo = [int(rng.integers(0, s - d)) for s, d in zip(shape, side)]
        mask[tuple(slice(a, a + d) for a, d in zip(lo, side))] = 1
        image = (mask + rng.normal(0, 0.25, shape)).astype(np.float32)
        write_tny(root / split / "images" / f"case{i}.tny", image, spacing=spacing)
        write_tny(root / split / "masks" / f"case{i}.tny", mask, spacing=spacing)
"""

PIPELINE = r"""
import json, sys, time
from pathlib import Path

from biom3d.core import Builder
from biom3d.core.stages.evaluate import evaluate
from biom3d.core.stages.predict import predict
from biom3d.core.stages.preprocess import preprocess_dataset
from biom3d_contract.tny import read_tny

data, work, train = Path(sys.argv[1]), Path(sys.argv[2]), json.loads(sys.argv[3])
out, clock = {}, time.perf_counter()
prep = preprocess_dataset(data / "train" / "images", data / "train" / "masks", work / "prep", num_classes=1,
                          progress=False)  # no stack named: the installed default must be contract/all
out.update(stack=prep.stack, plan=prep.plan, fingerprint=prep.fingerprint, t_preprocess=time.perf_counter() - clock)
result = Builder(prep.config_path, overrides={f"train.{k}": v for k, v in train.items()}).train(runs_dir=work / "runs")
out.update(run_dir=str(result.run_dir), history=result.history, t_train=time.perf_counter() - clock)
written = predict([result.run_dir], data / "test" / "images", work / "pred", progress=False)
out["predictions"] = {p.name: {"shape": list(read_tny(p).array.shape), "dtype": str(read_tny(p).array.dtype),
                               "spacing": read_tny(p).spacing, "values": sorted(set(read_tny(p).array.ravel().tolist()))}
                      for p in written}
report = evaluate(work / "pred", data / "test" / "masks", csv_path=work / "eval.csv")
out.update(dice=report.mean("dice"), classes=report.classes, t_predict_eval=time.perf_counter() - clock)
resumed = Builder.resume(result.run_dir, epochs=train["epochs"] + 1)  # the trainer reads its own state back
out.update(resumed=[h["epoch"] for h in resumed.history], t_total=time.perf_counter() - clock)
print("RESULT " + json.dumps(out))
print({k: round(v, 2) for k, v in out.items() if k.startswith("t_")}, file=sys.stderr)
"""


def _env(target: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BIOM3D_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(target), env.get("PYTHONPATH", "")) if p)
    env.update(extra)
    return env


def _python(args: list[str], target: Path, *, cwd: Path | None = None, timeout: int = 300, **env: str):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, encoding="utf-8", errors="replace", env=_env(target, **env),
                          cwd=cwd, timeout=timeout)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    target = tmp_path_factory.mktemp("contract-site")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-compile",
         "--target", str(target), str(DIST)],
        check=True, capture_output=True, timeout=300,
    )
    return target


@pytest.fixture(scope="module")
def dataset(installed, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("contract-data")
    proc = _python(["-c", GENERATE, str(root), ",".join(map(str, SHAPE))], installed)
    assert proc.returncode == 0, proc.stderr
    return root


@pytest.fixture(scope="module")
def pipeline(installed, dataset, tmp_path_factory) -> tuple[dict, Path]:
    work = tmp_path_factory.mktemp("contract-work")
    proc = _python(["-c", PIPELINE, str(dataset), str(work), json.dumps(TRAIN)], installed)
    assert proc.returncode == 0, proc.stderr[-6000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT ")), work


def test_the_installed_distribution_is_discovered_with_light_imports(installed, tmp_path):
    rc, out, err, modules = run_cli(["plugins", "--components", "--json"], tmp_path, pythonpath=[str(installed)])
    assert rc == 0, err
    data = json.loads(out)
    plugin = next(p for p in data["plugins"] if p["name"] == "contract")
    assert (plugin["state"], plugin["dist"], plugin["version"]) == ("loaded", "biom3d-contract", "0.0.1"), plugin
    ids = {c["id"] for c in data["components"]}
    assert set(IDS.values()) | {"contract/dice", "contract/argmax", "contract/epoch-file", "contract/all"} <= ids
    heavy = {m for m in modules if m.split(".")[0] in {"torch", "numpy"} or m.startswith("biom3d_contract.")}
    assert heavy == {"biom3d_contract.plugin"}, sorted(heavy)


def test_preprocess_train_predict_eval_with_contract_components_only(pipeline, dataset):
    out, work = pipeline
    run_dir = Path(out["run_dir"])

    # preprocessing: the contract stack is the default, its plan and fingerprint reached the written config
    assert out["stack"] == "contract/all"
    assert out["plan"] == {"patch_size": [16, 16, 16], "num_pools": [0, 0, 0], "batch_size": 2}
    assert out["fingerprint"]["num_images"] == 4 and out["fingerprint"]["median_shape"] == list(map(float, SHAPE))
    for key in ("images", "masks", "fg"):
        assert len(list((work / "prep" / key).iterdir())) == 4, key

    # the run records that every slot came from the contract plugin (core's checkpoint callback aside)
    config = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
    assert config["stack"] == "contract/all"
    for slot, qid in IDS.items():
        assert config[slot]["name"] == qid, slot
    assert [e["name"] for e in config["metrics"]] == ["contract/dice"]
    assert [e["name"] for e in config["postprocessors"]] == ["contract/argmax"]
    assert [e["name"] for e in config["callbacks"]] == ["core/checkpoint", "contract/epoch-file"]
    assert config["patch_size"] == [16, 16, 16] and config["train"]["iters_per_epoch"] == TRAIN["iters_per_epoch"]
    plugins = json.loads((run_dir / "plugins.json").read_text(encoding="utf-8"))
    assert plugins["stack"] == "contract/all"
    assert plugins["used"]["contract"]["dist"] == "biom3d-contract"
    assert set(plugins["used"]) == {"contract", "core"}
    assert plugins["used"]["core"]["components"] == ["core/checkpoint"]

    # training: the third-party trainer drove core's checkpoint callback and its own, at every point
    assert [h["epoch"] for h in out["history"]] == list(range(TRAIN["epochs"]))
    assert all({"train_loss", "val_loss", "val_dice", "val_dice_1"} <= set(h) for h in out["history"])
    assert {p.name for p in (run_dir / "checkpoints").iterdir()} >= {"last.pt", "best.pt"}
    lines = [json.loads(x) for x in (run_dir / "contract-epochs.txt").read_text(encoding="utf-8").splitlines()]
    assert [x["epoch"] for x in lines] == list(range(TRAIN["epochs"] + 1))  # + the epoch the resume added
    for i, x in enumerate(lines):
        assert x["trainer_epoch"] == x["epoch"] and x["history"] == i + 1
        assert x["batch_begins"] == x["batch_ends"] == TRAIN["iters_per_epoch"]
        assert x["monitor"] == "val_dice" and x["monitor_higher"] is True and x["val_sample"] is True
        assert x["run_dir"] == str(run_dir) and x["model"] == "TwoConv"
    # the callback's own state went into core's checkpoint through the trainer's state_dict, and came back
    end = json.loads((run_dir / "contract-epochs.txt.end").read_text(encoding="utf-8"))
    assert end == {"last_epoch": TRAIN["epochs"], "resumed_from": TRAIN["epochs"] - 1}
    assert out["resumed"] == list(range(TRAIN["epochs"] + 1))

    # prediction: .tny masks on the input's grid, with its spacing, readable by the contract's reader
    assert sorted(out["predictions"]) == ["case0.tny", "case1.tny"]
    for name, pred in out["predictions"].items():
        assert pred["shape"] == list(SHAPE) and pred["dtype"] == "uint8", name
        assert pred["spacing"] == list(SPACING) and set(pred["values"]) <= {0, 1}, name

    # evaluation: the bright cube is learnt
    assert out["classes"] == [1]
    assert out["dice"] > 0.5, out["dice"]
    assert (work / "eval.csv").is_file()


def test_biom3d_run_with_core_and_the_contract_plugin_alone(installed, dataset, tmp_path):
    runs = tmp_path / "runs"
    config = tmp_path / "cube.yaml"
    config.write_text(yaml.safe_dump({
        "name": "cube", "runs_dir": str(runs), "num_classes": 1,
        "data": {"images": str(dataset / "train" / "images"), "masks": str(dataset / "train" / "masks"),
                 "test_images": str(dataset / "test" / "images"), "test_masks": str(dataset / "test" / "masks")},
        "train": TRAIN,
    }), encoding="utf-8")
    # no other plugin loaded: core + this distribution must make a complete stack
    proc = _python(["-m", "biom3d.cli", "run", str(config)], installed, cwd=tmp_path, BIOM3D_PLUGINS="contract")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    folder = runs / "cube"
    rows = list(csv.reader((folder / "eval.csv").open(encoding="utf-8")))
    assert rows[0] == ["file", "class", "dice", "iou"]
    assert float(next(r for r in rows if r[:2] == ["mean", "all"])[2]) > 0.5, rows
    run_config = yaml.safe_load((folder / "run" / "config.yaml").read_text(encoding="utf-8"))
    assert run_config["stack"] == "contract/all" and run_config["model"]["name"] == "contract/two-conv"
    plugins = json.loads((folder / "run" / "plugins.json").read_text(encoding="utf-8"))
    assert {n for n, p in plugins["installed"].items() if p["state"] == "loaded"} == {"core", "contract"}
    assert sorted(p.name for p in (folder / "predictions").iterdir()) == ["case0.tny", "case1.tny"]


def _biom3d_imports(path: Path) -> list[tuple[int, str, str | None]]:
    """(line, module, name) for every import of a ``biom3d`` module (and biom3d strings used as modules)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name, None) for a in node.names if a.name.split(".")[0] == "biom3d"]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "biom3d":
            found += [(node.lineno, node.module, a.name) for a in node.names]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("biom3d."):
            found.append((node.lineno, node.value.partition(":")[0], "<string>"))
    return found


def test_the_distribution_imports_nothing_of_biom3d_but_the_contract():
    sources = sorted(SOURCES.rglob("*.py"))
    assert {p.name for p in sources} >= {"plugin.py", "tny.py", "preprocess.py", "data.py", "nets.py", "losses.py",
                                         "train.py", "infer.py"}
    bad = []
    for path in sources:
        for line, module, name in _biom3d_imports(path):
            ok = module in ALLOWED or (module == "biom3d.core" and name in ALLOWED_FROM_CORE)
            if not ok:
                bad.append(f"{path.relative_to(DIST)}:{line}: {module}" + (f" ({name})" if name else ""))
    assert bad == [], "the contract distribution may import only " + ", ".join(sorted(ALLOWED)) + ":\n" + "\n".join(bad)
    # the entry-point module stays light: no torch or numpy at its top level
    tree = ast.parse((SOURCES / "plugin.py").read_text(encoding="utf-8"))
    top = {a.name.split(".")[0] for n in tree.body if isinstance(n, ast.Import) for a in n.names}
    top |= {n.module.split(".")[0] for n in tree.body if isinstance(n, ast.ImportFrom) and n.module}
    assert not top & {"torch", "numpy"}, top

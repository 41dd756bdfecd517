"""Smoke test of one installed combination of biom3d distributions, run by `.ci/matrix` in a fresh venv.

Standard library + the installed biom3d only (numpy, and SimpleITK or nibabel for the synthetic data, come with
the combination). Every step is named and timed; a failed step prints its traceback and the others still run.
Exit code 0 when every step passed, 1 otherwise.

    python -I smoke.py --dists biom3d-core,biom3d-io,biom3d-models --work DIR [--python] [--cli] [--pipeline]

--python    the Python API: with --pipeline, every installed model builds and runs a forward pass, run_pipeline()
            on a minimal config, then preprocess -> Builder.train -> predict -> evaluate step by step
--cli       the `biom3d` command: --help, plugins, autoconfig, and `biom3d run CONFIG.yaml` (with --pipeline)
--gui       `biom3d gui` (biom3d-gui): the installed server starts, answers with the token and refuses without
--export    `biom3d export` (biom3d-export, with --cli --pipeline): the CLI run as TorchScript, ONNX and a
            bioimage.io package, and `biom3d predict` from each, agreeing with the run folder's masks
--pipeline  the combination is a complete stack: train/predict/evaluate on synthetic data

The configs name no component: only num_classes, data paths and a tiny budget. Which components train is the
installed plugins' business.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import math
import os
import re
import subprocess
import sys
import time
import traceback
from importlib import metadata
from pathlib import Path

SHAPE = (16, 32, 32)  # (D, H, W) of every synthetic volume: one patch, so prediction is a single tile
N_TRAIN, N_TEST = 3, 1
SUFFIXES = (".nii.gz", ".nii", ".tif", ".npy")  # data format: the first one the combination reads and writes
# A tiny budget: the only settings the minimal config adds to num_classes and the data paths.
TINY = {
    "train": {"epochs": 1, "iters_per_epoch": 2, "val_iters": 1, "workers": 0, "device": "cpu"},
    "autoconfig": {"max_dim": 32, "max_pool": 3, "max_batch": 2},
}


class Smoke:
    def __init__(self) -> None:
        self.steps: list[dict[str, object]] = []

    def step(self, name: str, func, *args, **kwargs):
        """Run one step; print ok/FAILED with its time; return its value (None if it failed)."""
        print(f"[smoke] {name} ...", flush=True)
        start = time.perf_counter()
        try:
            value = func(*args, **kwargs)
        except Exception as exc:  # a smoke reports every failure and carries on
            elapsed = time.perf_counter() - start
            traceback.print_exc(limit=-12, file=sys.stdout)  # the innermost frames
            lines = [line.strip() for line in f"{type(exc).__name__}: {exc}".splitlines() if line.strip()]
            reason = " | ".join(lines[:3])[:300]  # an error's head and its first problems
            print(f"[smoke] {name}: FAILED after {elapsed:.1f} s: {reason}", flush=True)
            self.steps.append({"step": name, "ok": False, "seconds": round(elapsed, 2), "error": reason})
            return None
        elapsed = time.perf_counter() - start
        print(f"[smoke] {name}: ok ({elapsed:.1f} s)", flush=True)
        self.steps.append({"step": name, "ok": True, "seconds": round(elapsed, 2)})
        return value

    def skip(self, name: str, why: str) -> None:
        print(f"[smoke] {name}: SKIPPED ({why})", flush=True)
        self.steps.append({"step": name, "ok": False, "seconds": 0.0, "error": f"skipped: {why}"})

    @property
    def failed(self) -> list[str]:
        return [str(s["step"]) for s in self.steps if not s["ok"]]


def note(text: str) -> None:
    """A detail of the current step (`.ci/matrix` shows these lines)."""
    print(f"[smoke]   {text}", flush=True)


def check(condition: bool, message: str) -> None:
    if not condition:
        raise AssertionError(message)


# -- what is installed ------------------------------------------------------------------------------------------
def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def installed_biom3d() -> dict[str, metadata.Distribution]:
    return {_norm(d.metadata["Name"]): d for d in metadata.distributions() if _norm(d.metadata["Name"]).startswith("biom3d")}


def check_distributions(expected: set[str]) -> None:
    """Exactly the expected biom3d distributions, installed from wheels (not editable, not the repository)."""
    found = installed_biom3d()
    check(set(found) == expected, f"installed biom3d distributions {sorted(found)} != expected {sorted(expected)}")
    for name, dist in found.items():
        direct = dist.read_text("direct_url.json")  # a Distribution decodes UTF-8 itself
        if direct and json.loads(direct).get("dir_info", {}).get("editable"):
            raise AssertionError(f"{name} is an editable install")
    import biom3d.core

    where = Path(biom3d.core.__file__).resolve()
    check(Path(sys.prefix).resolve() in where.parents, f"biom3d.core comes from {where}, not from this venv {sys.prefix}")
    spec = importlib.util.find_spec("biom3d")
    check(spec is not None and spec.origin in (None, "namespace"), f"biom3d is not a PEP 420 namespace: {spec}")
    note(f"{', '.join(f'{n} {d.version}' for n, d in sorted(found.items()))}; biom3d.core from {where.parent}")


def expected_plugins() -> set[str]:
    """'core' plus every entry point the installed biom3d distributions declare in biom3d.plugins."""
    names = {"core"}
    for dist in installed_biom3d().values():
        names |= {ep.name for ep in dist.entry_points if ep.group == "biom3d.plugins"}
    return names


def check_plugins():
    from biom3d.core import get_registry

    registry = get_registry()
    states = {info.name: info.state for info in registry.plugins.values()}
    wanted = expected_plugins()
    missing = wanted - set(states)
    check(not missing, f"plugins {sorted(missing)} not discovered (got {states})")
    bad = {i.name: f"{i.state}: {i.reason}" for i in registry.plugins.values() if i.state != "loaded"}
    check(not bad, f"plugins not loaded: {bad}")
    kinds: dict[str, int] = {}
    for comp in registry.components():
        kinds[comp.kind] = kinds.get(comp.kind, 0) + 1
    note(f"plugins {sorted(states)} all loaded; components {kinds}")
    return registry


# -- core, no data -----------------------------------------------------------------------------------------------
def check_config_validation() -> None:
    from biom3d.core.config import validate
    from biom3d.core.errors import ConfigError

    good = {"num_classes": 2, "data": {"images": "img", "masks": "msk"}, "train": {"epochs": 3, "lr": 0.001}}
    cfg = validate(good, resolve=False)
    check(cfg.num_classes == 2 and cfg.train.epochs == 3, f"validate() lost values: {cfg!r}")
    try:
        validate({"num_classes": 1, "train": {"epochz": 3}}, resolve=False)
    except ConfigError as exc:
        check("train.epochz" in str(exc), f"the ConfigError does not name train.epochz: {exc}")
    else:
        raise AssertionError("validate() accepted train.epochz")
    try:
        validate({"num_classes": 0}, resolve=False)
    except ConfigError as exc:
        check("num_classes" in str(exc), f"the ConfigError does not name num_classes: {exc}")
    else:
        raise AssertionError("validate() accepted num_classes: 0")


def check_autoconfig() -> None:
    module = None
    for name in ("biom3d.core.builtins.autoconfig", "biom3d.core.autoconfig"):
        try:
            module = importlib.import_module(name)
            break
        except ModuleNotFoundError:
            continue
    check(module is not None, "no auto_config in biom3d.core.builtins.autoconfig nor biom3d.core.autoconfig")
    auto = module.auto_config([64, 128, 128])
    check(len(auto.patch_size) == 3 and all(int(s) > 0 for s in auto.patch_size), f"bad patch size {auto}")
    check(len(auto.num_pools) == 3 and all(int(p) >= 0 for p in auto.num_pools), f"bad pooling {auto}")
    note(f"auto_config([64, 128, 128]) -> patch {list(auto.patch_size)}, pools {list(auto.num_pools)}, "
          f"batch {auto.batch_size}")


def check_models_build(registry) -> None:
    """Every installed model builds with its default params and runs a forward pass: a network whose code needs an
    undeclared package (an optional import of its library's, say) fails here, not in a user's run. A model whose
    params refuse a 32^3 patch gets 64^3."""
    import torch
    from pydantic import ValidationError

    from biom3d.core.context import RunContext
    from biom3d.core.errors import ConfigError

    failures, built = {}, []
    for comp in registry.components("model"):
        start = time.perf_counter()
        for side in (32, 64):
            patch = (side, side, side)
            ctx = RunContext(num_classes=1, in_channels=1, patch_size=patch, num_pools=(3, 3, 3))
            try:
                net = comp.build({}, ctx)
                net.eval()
                with torch.no_grad():
                    net(torch.zeros(1, 1, *patch))
            except (ValidationError, ConfigError) as exc:  # its params refuse this patch: try the next one
                failures[comp.qid] = f"{type(exc).__name__}: {' | '.join(str(exc).splitlines()[:2])[:200]}"
                continue
            except Exception as exc:  # collect every failure
                failures[comp.qid] = f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:200]}"
            else:
                failures.pop(comp.qid, None)
                built.append(f"{comp.qid} {side}^3 {time.perf_counter() - start:.1f} s")
            break
    note(f"built and ran {', '.join(built) or 'no model'}")
    check(not failures, f"models that do not build or run with their defaults: {failures}")


# -- synthetic data ----------------------------------------------------------------------------------------------
def choose_suffix(registry) -> str:
    readable, writable = set(registry.suffixes("reader")), set(registry.suffixes("writer"))
    for suffix in SUFFIXES:
        if suffix in readable and suffix in writable and _saver(suffix) is not None:
            return suffix
    raise AssertionError(f"no data format both read and written here (readers {sorted(readable)}, writers "
                         f"{sorted(writable)}) that this script can write ({', '.join(SUFFIXES)})")


def _saver(suffix: str):
    """A function (path, array) writing ``suffix`` with a library this combination installed, or None."""
    import numpy as np

    if suffix == ".npy":
        return lambda path, array: np.save(path, array)
    if suffix == ".tif":
        try:
            import tifffile
        except ImportError:
            return None
        return lambda path, array: tifffile.imwrite(path, array)
    try:
        import SimpleITK as sitk

        def save(path: Path, array) -> None:
            image = sitk.GetImageFromArray(array)
            image.SetSpacing((1.0, 1.0, 2.0))  # (x, y, z)
            sitk.WriteImage(image, str(path))

        return save
    except ImportError:
        pass
    try:
        import nibabel as nib
    except ImportError:
        return None

    def save_nib(path: Path, array) -> None:  # nibabel's voxel axes are (x, y, z): reverse NumPy's (z, y, x)
        nib.save(nib.Nifti1Image(np.ascontiguousarray(array.transpose(2, 1, 0)), np.diag([1.0, 1.0, 2.0, 1.0])),
                 str(path))

    return save_nib


def make_dataset(root: Path, suffix: str) -> dict[str, str]:
    """Bright blobs on noise; masks 0/1."""
    import numpy as np

    save = _saver(suffix)
    rng = np.random.default_rng(0)
    z, y, x = np.indices(SHAPE)
    folders = {}
    for split, n in (("train", N_TRAIN), ("test", N_TEST)):
        for kind in ("images", "masks"):
            folders[f"{split}_{kind}"] = root / split / kind
            folders[f"{split}_{kind}"].mkdir(parents=True, exist_ok=True)
        for i in range(n):
            mask = np.zeros(SHAPE, np.uint8)
            for _ in range(3):
                c = rng.integers([4, 8, 8], [SHAPE[0] - 4, SHAPE[1] - 8, SHAPE[2] - 8])
                r = int(rng.integers(4, 7))
                mask[((z - c[0]) * 2.0) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2 < r * r] = 1
            image = (mask * 2.0 + rng.normal(0.0, 0.5, SHAPE)).astype(np.float32)
            save(folders[f"{split}_images"] / f"case{i}{suffix}", image)
            save(folders[f"{split}_masks"] / f"case{i}{suffix}", mask)
    note(f"{N_TRAIN} training + {N_TEST} test volumes {SHAPE} as {suffix} in {root}")
    return {"images": str(folders["train_images"]), "masks": str(folders["train_masks"]),
            "test_images": str(folders["test_images"]), "test_masks": str(folders["test_masks"])}


def minimal_config(data: dict[str, str], runs_dir: Path, name: str) -> dict[str, object]:
    """num_classes + data paths (+ where to write and a tiny budget): no component is named."""
    return {"name": name, "runs_dir": str(runs_dir), "num_classes": 1, "data": dict(data), **json.loads(json.dumps(TINY))}


def _dice(value) -> float:
    check(isinstance(value, float) and not math.isnan(value) and 0.0 <= value <= 1.0, f"mean Dice is {value!r}")
    return value


# -- Python API --------------------------------------------------------------------------------------------------
def python_run_pipeline(data: dict[str, str], work: Path) -> None:
    from biom3d.core.stages.run import run_pipeline

    raw = minimal_config(data, work / "runs-py", "smoke-py")
    result = run_pipeline(raw, progress=False)
    check(result.run_dir is not None and (result.run_dir / "config.yaml").is_file(), f"no run folder: {result}")
    predicted = sorted(p.name for p in Path(result.predictions or "/nonexistent").iterdir()) if result.predictions else []
    check(len(predicted) == N_TEST, f"predictions {predicted} in {result.predictions}, expected {N_TEST}")
    check(result.report is not None, "no evaluation report")
    dice = _dice(result.report.mean("dice"))
    check((result.folder / "eval.csv").is_file(), "no eval.csv")
    note(f"run_pipeline: {result.folder}, mean Dice {dice:.3f}; {_components(result.run_dir)}")


def python_step_by_step(data: dict[str, str], work: Path) -> None:
    from biom3d.core import Builder
    from biom3d.core.stages.evaluate import evaluate
    from biom3d.core.stages.predict import predict
    from biom3d.core.stages.preprocess import preprocess_dataset

    prep = preprocess_dataset(Path(data["images"]), Path(data["masks"]), work / "prep", num_classes=1, workers=0,
                              progress=False, **TINY["autoconfig"])
    check(prep.config_path.is_file(), f"preprocess wrote no {prep.config_path}")
    overrides = {f"train.{k}": v for k, v in TINY["train"].items()}
    trained = Builder(prep.config_path, overrides=overrides).train(runs_dir=work / "runs-api")
    check((trained.run_dir / "config.yaml").is_file(), f"no config.yaml in {trained.run_dir}")
    written = predict([trained.run_dir], data["test_images"], work / "pred-api", device="cpu", progress=False)
    check(len(written) == N_TEST and all(Path(p).exists() for p in written), f"predict wrote {written}")
    report = evaluate(work / "pred-api", data["test_masks"], num_classes=1)
    dice = _dice(report.mean("dice"))
    note(f"Builder.train -> {trained.run_dir}; mean Dice {dice:.3f}; {_components(trained.run_dir)}")


def _components(run_dir: Path) -> str:
    """Which components the resolved config chose (for the log)."""
    text = (Path(run_dir) / "config.yaml").read_text(encoding="utf-8")
    names = []
    for slot in ("dataset", "model", "loss"):
        m = re.search(rf"^{slot}:\s*\n\s+name:\s*(\S+)", text, re.M)
        if m:
            names.append(f"{slot}={m.group(1)}")
    return ", ".join(names)


# -- CLI ---------------------------------------------------------------------------------------------------------
def _biom3d(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("biom3d")
    check(exe.is_file(), f"no biom3d console script beside {sys.executable}")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([str(exe), *args], capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=timeout, env=env)
    if out.returncode != 0:
        print(out.stdout[-3000:] + out.stderr[-6000:], flush=True)
    check(out.returncode == 0, f"`biom3d {' '.join(args)}` exited {out.returncode}: "
          f"{(out.stderr.strip().splitlines() or [''])[-1][:200]}")
    return out


def cli_basics() -> None:
    out = _biom3d("--help")
    check("Usage" in out.stdout and "run" in out.stdout, "`biom3d --help` lists no commands")
    _biom3d("--version")
    _biom3d("plugins")
    listed = json.loads(_biom3d("plugins", "--json").stdout)
    states = {p["name"]: p["state"] for p in listed["plugins"]}
    check(expected_plugins() <= set(states) and set(states.values()) == {"loaded"},
          f"`biom3d plugins --json`: {states}, expected {sorted(expected_plugins())} all loaded")
    auto = json.loads(_biom3d("autoconfig", "--median", "64", "128", "128", "--json").stdout)
    check("patch_size" in auto and "num_pools" in auto, f"`biom3d autoconfig --json` printed {auto}")
    note(f"plugins {states}; autoconfig {auto}")


def cli_run(data: dict[str, str], work: Path) -> None:
    import yaml  # biom3d-core's dependency

    raw = minimal_config(data, work / "runs-cli", "smoke-cli")
    config = work / "minimal.yaml"
    config.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    note(f"{config.name}: {json.dumps(raw)}")
    out = _biom3d("run", str(config))
    folder = work / "runs-cli" / "smoke-cli"
    check((folder / "eval.csv").is_file(), f"`biom3d run` wrote no {folder / 'eval.csv'}")
    check("mean Dice" in out.stdout, "`biom3d run` printed no evaluation table")
    note("biom3d run: " + out.stdout.strip().splitlines()[-1])


def cli_export(data: dict[str, str], work: Path) -> None:
    """`biom3d export` of the run `cli_run` trained, then `biom3d predict` from each export: the same masks as
    the run folder's own prediction."""
    import numpy as np

    run_dir = work / "runs-cli" / "smoke-cli" / "run"
    check((run_dir / "config.yaml").is_file(), f"no run folder {run_dir} (the `biom3d run` step failed?)")
    exports = work / "exports"
    out = _biom3d("export", str(run_dir), "--format", "torchscript", "--format", "onnx", "--format", "bioimageio",
                  "--output", str(exports))
    files = {p.name: p for p in exports.iterdir() if p.suffix in (".pt", ".onnx", ".zip")}
    check(len(files) == 3, f"`biom3d export` wrote {sorted(files)}, expected a .pt, an .onnx and a .zip")
    check((run_dir / "exports.json").is_file(), "`biom3d export` recorded nothing in exports.json")
    reference = work / "pred-export-ref"
    _biom3d("predict", str(run_dir), "--input", data["test_images"], "--output", str(reference), "--device", "cpu")
    expected = {p.name: p for p in reference.iterdir()}
    for name, path in sorted(files.items()):
        target = work / f"pred-{name}"
        _biom3d("predict", str(path), "--input", data["test_images"], "--output", str(target), "--device", "cpu")
        got = {p.name: p for p in target.iterdir()}
        check(set(got) == set(expected), f"predict from {name} wrote {sorted(got)}, the run folder {sorted(expected)}")
        for key in expected:
            same = np.array_equal(_read_mask(got[key]), _read_mask(expected[key]))
            check(same, f"predict from {name}: {key} differs from the run folder's prediction")
    note(f"exported and predicted alike from {', '.join(sorted(files))}; " + out.stdout.strip().splitlines()[-1])


def _read_mask(path: Path):
    """A written mask as an array, with the reader this combination installed."""
    import numpy as np

    from biom3d.core import get_registry

    return np.asarray(get_registry().reader_for(path).build({}, None)(path).array)


def gui_serves(work: Path) -> None:
    """`biom3d gui` from the installed wheels: listed by `biom3d --help`, serves the API with the token, refuses
    a request without it."""
    import urllib.error
    import urllib.request

    check(" gui " in _biom3d("--help").stdout, "`biom3d --help` does not list `gui`")
    exe = Path(sys.executable).with_name("biom3d")
    env = {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, "BIOM3D_GUI_TOKEN": "smoke-token"}
    cmd = [str(exe), "gui", "--no-browser", "--port", "0", "--root", str(work), "--runs-dir", str(work / "gui-runs")]
    server = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, encoding="utf-8",
                              errors="replace", env=env)
    try:
        url, seen, deadline = None, [], time.monotonic() + 120
        while url is None and time.monotonic() < deadline:
            line = server.stdout.readline()
            if not line:
                break
            seen.append(line)
            found = re.search(r"open (http://[^/\s]+)", line)
            url = found.group(1) if found else None
        check(url is not None, "`biom3d gui` printed no address: " + "".join(seen)[-2000:])
        with urllib.request.urlopen(urllib.request.Request(f"{url}/api/runs", headers={"X-Biom3d-Token": "smoke-token"}),
                                    timeout=30) as reply:
            check(reply.status == 200, f"GET /api/runs with the token: {reply.status}")
            body = json.loads(reply.read())
        try:
            urllib.request.urlopen(f"{url}/api/runs", timeout=30)
            check(False, "GET /api/runs without the token was answered")
        except urllib.error.HTTPError as exc:
            check(exc.code in (401, 403), f"GET /api/runs without the token: {exc.code}")
        note(f"biom3d gui at {url}: /api/runs {type(body).__name__}, refused without token")
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()


# -- main --------------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dists", required=True, help="comma-separated biom3d distributions expected installed")
    parser.add_argument("--work", required=True, type=Path, help="scratch folder")
    parser.add_argument("--python", action="store_true", help="exercise the Python API")
    parser.add_argument("--cli", action="store_true", help="exercise the biom3d command")
    parser.add_argument("--gui", action="store_true", help="exercise `biom3d gui` (biom3d-gui installed)")
    parser.add_argument("--export", action="store_true", help="exercise `biom3d export` (with --cli --pipeline)")
    parser.add_argument("--pipeline", action="store_true", help="a complete stack: train, predict, evaluate")
    parser.add_argument("--summary", type=Path, help="write the steps' results here (JSON)")
    args = parser.parse_args(argv)
    os.environ.setdefault("MPLBACKEND", "Agg")
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    smoke = Smoke()
    expected = {_norm(d) for d in args.dists.split(",") if d.strip()}

    smoke.step("distributions", check_distributions, expected)
    registry = smoke.step("plugin discovery", check_plugins)
    smoke.step("config validation", check_config_validation)
    smoke.step("autoconfig", check_autoconfig)
    if args.cli:
        smoke.step("cli: --help, plugins, autoconfig", cli_basics)
    if args.gui:
        smoke.step("gui: biom3d gui serves with its token", gui_serves, work)
    if args.pipeline:
        suffix = smoke.step("data format", choose_suffix, registry) if registry is not None else None
        data = smoke.step("synthetic data", make_dataset, work / "data", suffix) if suffix else None
        if args.python and registry is not None:
            smoke.step("python: every model builds and runs", check_models_build, registry)
        if data is None:
            smoke.skip("pipeline", "no data")
        else:
            if args.python:
                smoke.step("python: run_pipeline(minimal config)", python_run_pipeline, data, work)
                smoke.step("python: preprocess -> Builder.train -> predict -> evaluate", python_step_by_step, data, work)
            if args.cli:
                smoke.step("cli: biom3d run minimal.yaml", cli_run, data, work)
            if args.cli and args.export:
                smoke.step("cli: biom3d export -> biom3d predict from each export", cli_export, data, work)

    if args.summary:
        args.summary.write_text(json.dumps(smoke.steps, indent=2), encoding="utf-8")
    total = sum(float(s["seconds"]) for s in smoke.steps)
    if smoke.failed:
        print(f"[smoke] FAILED steps ({total:.0f} s): " + "; ".join(smoke.failed), flush=True)
        return 1
    print(f"[smoke] all {len(smoke.steps)} steps passed ({total:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

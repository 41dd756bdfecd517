"""A tiny real dataset (8 x 16 x 16 volumes), a tiny real training (one iteration), and ways to run the CLI,
including inside a private mount namespace (a full disk, a read-only folder)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

SHAPE = (8, 16, 16)
SPACING = (2.0, 0.5, 0.5)
#: one iteration of everything: what these tests check is the handling around training, not its result
ONE_STEP = {
    "train.epochs": 1,
    "train.iters_per_epoch": 1,
    "train.batch_size": 1,
    "train.val_iters": 1,
    "train.workers": 0,
    "model.params.base_features": 2,
}


def sphere(rng: np.random.Generator, shape=SHAPE) -> np.ndarray:
    z, y, x = np.indices(shape)
    c = rng.integers([3, 5, 5], [shape[0] - 3, shape[1] - 5, shape[2] - 5])
    return ((((z - c[0]) * 1.5) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2) < 9).astype(np.uint8)


def write_tiff(path: Path, array: np.ndarray, spacing=SPACING) -> None:
    import tifffile

    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, array, imagej=True, resolution=(1 / spacing[2], 1 / spacing[1]),
                     metadata={"spacing": spacing[0], "unit": "um", "axes": "ZYX"})


def make_dataset(root: Path, n_train: int = 4, n_test: int = 1, seed: int = 0, *, empty: tuple[int, ...] = ()) -> Path:
    """``root/{train,test}/{images,masks}/case<i>.tif``; masks listed in ``empty`` hold no foreground."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("test", n_test)):
        for i in range(n):
            mask = sphere(rng)
            image = (mask * 2.0 + rng.normal(0, 0.5, SHAPE)).astype(np.float32)
            if split == "train" and i in empty:
                mask[:] = 0
            write_tiff(root / split / "images" / f"case{i}.tif", image)
            write_tiff(root / split / "masks" / f"case{i}.tif", mask)
    return root


def preprocess(dataset: Path, out: Path, **kw):
    from biom3d.core.stages.preprocess import preprocess_dataset

    return preprocess_dataset(dataset / "train" / "images", dataset / "train" / "masks", out, num_classes=1,
                              workers=0, progress=False, **kw)


@pytest.fixture(scope="session")
def dataset(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="session")
def prepared(dataset, tmp_path_factory):
    return preprocess(dataset, tmp_path_factory.mktemp("prep") / "tiny")


@pytest.fixture(scope="session")
def trained(prepared, tmp_path_factory):
    from biom3d.core.builder import Builder

    return Builder(prepared.config_path, overrides=ONE_STEP).train(runs_dir=tmp_path_factory.mktemp("runs"))


def cli(*args: str, cwd: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """`biom3d ARGS` in a fresh interpreter (the CLI configures logging for its whole process)."""
    return subprocess.run([sys.executable, "-m", "biom3d.cli", *args], capture_output=True, text=True, encoding="utf-8", errors="replace",
                          timeout=timeout, cwd=cwd)


# -- private mounts ---------------------------------------------------------------------------------------
DRIVER = textwrap.dedent(r"""
    import json, os, sys, traceback
    from pathlib import Path

    from biom3d.cli.app import main


    def complete(path):
        # "ok" when the file reads back whole in its format, else why not
        import numpy as np, tifffile, torch, yaml
        try:
            name = path.name
            if name.endswith(".npz"):
                with np.load(path) as data:
                    [data[k] for k in data.files]
            elif name.endswith(".npy"):
                np.load(path)
            elif name.endswith(".json"):
                json.loads(path.read_text())
            elif name.endswith(".yaml"):
                yaml.safe_load(path.read_text())
            elif name.endswith(".pt"):
                torch.load(path, weights_only=True)
            elif name.endswith((".tif", ".tiff")):
                tifffile.imread(path)
            elif name.endswith(".png"):
                assert path.read_bytes()[-8:-4] == b"IEND", "no IEND chunk"
            return "ok"
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"

    cases = json.loads(Path(sys.argv[1]).read_text())
    results = []
    for i, argv in enumerate(cases):
        log = Path(sys.argv[2]).with_suffix(f".{i}.err")
        saved = os.dup(2)
        with open(log, "w") as f:
            os.dup2(f.fileno(), 2)
            try:
                rc = main(argv)
            except BaseException:
                sys.stderr.write(traceback.format_exc())
                rc = "raised"
            sys.stderr.flush()
            os.dup2(saved, 2)
        files = {}
        for root in json.loads(Path(sys.argv[3]).read_text()):
            for p in sorted(Path(root).rglob("*")):
                if p.is_file() and p.name != "filler":
                    files[str(p)] = complete(p)
        results.append({"argv": argv, "rc": rc, "stderr": log.read_text(), "files": files})
    Path(sys.argv[2]).write_text(json.dumps(results))
""")


def _namespaces_work(tmp: Path) -> str | None:
    """None when a user namespace can mount a tmpfs and a read-only bind here, else why not."""
    if shutil.which("unshare") is None:
        return "no unshare command"
    probe = tmp / "probe"
    probe.mkdir(exist_ok=True)
    script = f"mount -t tmpfs -o size=16k tmpfs {probe} && mount --bind {probe} {probe} && " \
             f"mount -o remount,ro,bind {probe} && ! touch {probe}/x 2>/dev/null"
    out = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, encoding="utf-8", errors="replace")
    return None if out.returncode == 0 else f"cannot mount in a user namespace: {out.stderr.strip()[:200]}"


@pytest.fixture(scope="session")
def confined(tmp_path_factory):
    """``run(cases, tmpfs={dir: bytes}, readonly=[dirs])``: run each argv through the CLI's ``main`` in one
    process inside a private mount namespace where each ``tmpfs`` dir is a disk of that size and each
    ``readonly`` dir is read-only; returns per case the exit code, stderr and the files then under those dirs.
    Skips where user namespaces or mounts are not available (running as root, chmod alone blocks nothing)."""
    work = tmp_path_factory.mktemp("confined")
    why = _namespaces_work(work)
    if why:
        pytest.skip(why)
    (work / "driver.py").write_text(DRIVER, encoding="utf-8")

    def run(cases: list[list[str]], *, tmpfs: dict[Path, int] | None = None, readonly: list[Path] = (),
            fill: list[Path] = ()) -> list[dict]:
        tmpfs, n = tmpfs or {}, len(list(work.iterdir()))
        steps = []
        for folder, size in tmpfs.items():
            Path(folder).mkdir(parents=True, exist_ok=True)
            steps.append(f"mount -t tmpfs -o size={size} tmpfs {folder}")
        for folder in fill:  # leave no byte free
            steps.append(f"(cat /dev/zero > {folder}/filler) 2>/dev/null || true")
        for folder in readonly:
            Path(folder).mkdir(parents=True, exist_ok=True)
            steps += [f"mount --bind {folder} {folder}", f"mount -o remount,ro,bind {folder}"]
        spec, result, roots = work / f"cases{n}.json", work / f"result{n}.json", work / f"roots{n}.json"
        spec.write_text(json.dumps(cases), encoding="utf-8")
        roots.write_text(json.dumps([str(p) for p in [*tmpfs, *readonly]]), encoding="utf-8")
        steps.append(f"exec {sys.executable} {work / 'driver.py'} {spec} {result} {roots}")
        proc = subprocess.run(["unshare", "-rm", "sh", "-c", " && ".join(steps)], capture_output=True, text=True, encoding="utf-8", errors="replace",
                              timeout=300)
        assert proc.returncode == 0 and result.is_file(), proc.stderr[-3000:]
        return json.loads(result.read_text(encoding="utf-8"))

    return run

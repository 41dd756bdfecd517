"""Helpers shared by the benchmarks: synthetic data, measured child processes, the original's venv, tables.

Stdlib only at import time (numpy and tifffile are imported where data is made), so that the drivers stay
small (a child's ru_maxrss starts from its parent's peak: the high-water mark survives vfork + exec) and so
that the scripts in ``benchmarks/orig/`` can import it from the original's venv without touching our code.

Also a script: ``python benchmarks/_common.py make-data OUT --n 20 --shape 64 256 256`` writes a synthetic
TIFF dataset (``OUT/images``, ``OUT/masks``) in a child process, so that the driver never holds the arrays.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
ORIG_DIR = BENCH_DIR / "orig"
THREADS = 2
RESULT_TAG = "BENCH_RESULT "
ORIG_MISSING = ("n/a (create it with: python3.11 -m venv benchmarks/.venv-orig && "
                "benchmarks/.venv-orig/bin/pip install torch==2.13.0 biom3d==0.1.2)")


# -- arguments --------------------------------------------------------------------------------------------------
def default_orig_python() -> str:
    """benchmarks/.venv-orig/bin/python if it exists, else /work/venv-orig/bin/python."""
    local = BENCH_DIR / ".venv-orig" / "bin" / "python"
    return str(local if local.exists() else Path("/work/venv-orig/bin/python"))


def base_parser(doc: str | None, *, repeats: int, warmup: int = 1) -> argparse.ArgumentParser:
    """A parser with the options every benchmark shares."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small smoke-test sizes (checks the script runs)")
    parser.add_argument("--repeats", type=int, default=repeats, help="timed repetitions (median reported)")
    parser.add_argument("--warmup", type=int, default=warmup, help="untimed repetitions first")
    parser.add_argument("--orig-python", default=default_orig_python(),
                        help="python of a venv with the original biom3d 0.1.2 (default: %(default)s)")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # internal: run one measured case
    parser.add_argument("--spec", help=argparse.SUPPRESS)  # internal: the case's settings, JSON
    return parser


def orig_available(python: str) -> bool:
    return Path(python).is_file() and os.access(python, os.X_OK)


# -- children -----------------------------------------------------------------------------------------------------
@dataclass
class ChildResult:
    """What a measured child reported, with its memory high-water marks."""

    data: dict[str, Any]
    peak_mib: float  # largest single process of the child's tree (wait4 ru_maxrss)
    total_mib: float  # largest sampled sum of PSS over the child and its descendants (workers included)
    wall_s: float
    log: str = field(repr=False, default="")


class ChildError(RuntimeError):
    pass


def run_child(cmd: Sequence[str], *, orig: bool = False, timeout: float | None = None,
              sample_every: float = 0.2) -> ChildResult:
    """Run ``cmd``, a script that ends by calling :func:`emit`, and measure its memory.

    ``orig``: the command runs in the original's venv; PYTHONPATH is cleared so that nothing of ours leaks in.
    """
    env = {**os.environ, "OMP_NUM_THREADS": str(THREADS), "PYTHONUNBUFFERED": "1", "MPLBACKEND": "Agg"}
    if orig:
        env.pop("PYTHONPATH", None)
    with tempfile.TemporaryFile("w+", encoding="utf-8") as out, tempfile.TemporaryFile("w+", encoding="utf-8") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(list(cmd), stdout=out, stderr=err, env=env, cwd=str(ROOT))
        sampler = _TreeSampler(proc.pid, sample_every)
        sampler.start()
        status, usage = _wait(proc, timeout)
        sampler.stop()
        wall = time.perf_counter() - start
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    code = os.waitstatus_to_exitcode(status)
    results = tagged_results(stdout)
    if code != 0 or not results:
        with tempfile.NamedTemporaryFile("w", encoding="utf-8", prefix="biom3d-bench-child-", suffix=".log",
                                         delete=False) as log:
            log.write(f"$ {shlex.join(cmd)}\n--- stdout\n{stdout}\n--- stderr\n{stderr}")
        tail = "\n".join((stdout + stderr).strip().splitlines()[-25:])
        raise ChildError(f"{' '.join(cmd[:4])} ... failed (exit {code}); whole log: {log.name}\n{tail}")
    data = results[-1]
    return ChildResult(data, usage.ru_maxrss / 1024, sampler.peak_kib / 1024, wall, stdout + stderr)


def _wait(proc: subprocess.Popen, timeout: float | None) -> tuple[int, resource.struct_rusage]:
    """wait4 on this very child: its own rusage (max RSS over it and the descendants it waited for)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG if deadline else 0)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)  # keep Popen from reaping it again
            return status, usage
        if time.monotonic() > deadline:
            proc.kill()
            deadline = None
        time.sleep(0.05)


class _TreeSampler(threading.Thread):
    """Polls the summed PSS of a process and its descendants (/proc), keeping the maximum."""

    def __init__(self, pid: int, every: float):
        super().__init__(daemon=True)
        self.pid, self.every, self.peak_kib = pid, every, 0
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.wait(self.every):
            self.peak_kib = max(self.peak_kib, sum(_pss_kib(p) for p in _tree(self.pid)))

    def stop(self) -> None:
        self._halt.set()
        self.join()


def _tree(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        with contextlib.suppress(OSError):
            todo += [int(c) for c in Path(f"/proc/{p}/task/{p}/children").read_text(encoding="utf-8").split()]
    return pids


def _pss_kib(pid: int) -> int:
    """Proportional set size: shared pages (forked workers, libraries) counted once across the tree."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text(encoding="utf-8").splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    try:  # no smaps_rollup (old kernel): RSS, which counts shared pages in every process
        return int(Path(f"/proc/{pid}/statm").read_text(encoding="utf-8").split()[1]) * (os.sysconf("SC_PAGE_SIZE") // 1024)
    except (OSError, IndexError, ValueError):
        return 0


# -- step workers: two long-lived children taking turns -------------------------------------------------------
READY_TAG, STEP_TAG = "BENCH_READY", "BENCH_STEP "


class StepWorker:
    """A child that serves timed steps on request (:func:`serve_steps`), so that two of them (ours, the
    original) can take turns step by step and a change of machine load hits both alike."""

    def __init__(self, cmd: Sequence[str], *, orig: bool = False):
        env = {**os.environ, "OMP_NUM_THREADS": str(THREADS), "PYTHONUNBUFFERED": "1", "MPLBACKEND": "Agg"}
        if orig:
            env.pop("PYTHONPATH", None)
        self.cmd = list(cmd)
        self._err = tempfile.TemporaryFile("w+", encoding="utf-8")  # noqa: SIM115 (closed by finish or kill)
        self.proc = subprocess.Popen(self.cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._err,
                                     env=env, cwd=str(ROOT), text=True, encoding="utf-8", errors="replace")
        self._read(READY_TAG)

    def step(self) -> dict[str, float]:
        """One step in the child: its ``measured`` figures."""
        self.proc.stdin.write("step\n")
        self.proc.stdin.flush()
        return json.loads(self._read(STEP_TAG))

    def finish(self) -> ChildResult:
        """Stop the child: what it emitted last, with its peak RSS (wait4)."""
        self.proc.stdin.write("quit\n")
        self.proc.stdin.flush()
        data = json.loads(self._read(RESULT_TAG))
        status, usage = _wait(self.proc, None)
        self._err.close()
        return ChildResult(data, usage.ru_maxrss / 1024, float("nan"), 0.0)

    def kill(self) -> None:
        with contextlib.suppress(OSError):
            self.proc.kill()
            self.proc.wait()
        self._err.close()

    def _read(self, tag: str) -> str:
        for line in self.proc.stdout:
            if line.startswith(tag):
                return line[len(tag):].strip()
        self.proc.wait()
        self._err.seek(0)
        tail = "\n".join(self._err.read().strip().splitlines()[-25:])
        raise ChildError(f"{' '.join(self.cmd[:4])} ... failed (exit {self.proc.returncode}):\n{tail}")


def serve_steps(step: Callable[[], Any], result: Callable[[], dict[str, Any]]) -> None:
    """The child's side of :class:`StepWorker`: ``step`` on each request, then ``result()`` emitted at the end."""
    print(READY_TAG, flush=True)
    for line in sys.stdin:
        if line.strip() == "step":
            print(STEP_TAG + json.dumps(measured(step)), flush=True)
        elif line.strip() == "quit":
            break
    emit(result())


# -- inside a child -------------------------------------------------------------------------------------------------
def tagged_results(text: str) -> list[dict[str, Any]]:
    """Every result :func:`emit` printed into ``text``, in order. Found by their tag anywhere in a line, not only at
    its start: the two ranks of a torchrun job writing into one file once ran their lines together."""
    decoder, results = json.JSONDecoder(), []
    start = text.find(RESULT_TAG)
    while start >= 0:
        data, end = decoder.raw_decode(text, start + len(RESULT_TAG))
        results.append(data)
        start = text.find(RESULT_TAG, end)
    return results


def emit(data: dict[str, Any]) -> None:
    """Print a child's result (the last one in its stdout is what the driver reads: :func:`tagged_results`)."""
    data = {**data, "self_peak_mib": self_peak_mib()}
    print(RESULT_TAG + json.dumps(data), flush=True)


def self_peak_mib() -> float:
    """Peak RSS of this process alone since its exec (VmHWM), not counting its workers."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text(encoding="utf-8").splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(fn: Callable[[], Any], *, warmup: int, repeats: int, setup: Callable[[], Any] | None = None) -> list[float]:
    """Seconds of each of ``repeats`` calls of ``fn`` after ``warmup`` untimed ones (``setup`` runs untimed)."""
    times = []
    for i in range(warmup + repeats):
        if setup is not None:
            setup()
        start = time.perf_counter()
        fn()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return times


def measured(fn: Callable[[], Any]) -> dict[str, float]:
    """Run ``fn`` once: its wall seconds, this process's user and system CPU seconds and minor page faults
    (first touches of fresh pages: large tensors freed and allocated again show up here and in ``sys``)."""
    before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    fn()
    wall, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
    return {"wall": wall, "user": after.ru_utime - before.ru_utime, "sys": after.ru_stime - before.ru_stime,
            "minflt": after.ru_minflt - before.ru_minflt}


def loader_rates(loader: Any, *, batch: int, warmup: int, windows: int, per_window: int) -> list[float]:
    """Patches/s of a DataLoader over ``windows`` windows of ``per_window`` batches, after ``warmup`` batches
    (which absorb the workers' start). The loader must yield at least ``warmup + windows * per_window`` batches."""
    it = iter(loader)
    for _ in range(warmup):
        next(it)
    rates = []
    for _ in range(windows):
        start = time.perf_counter()
        for _ in range(per_window):
            next(it)
        rates.append(per_window * batch / (time.perf_counter() - start))
    del it  # stops the workers
    return rates


def child_spec(args: argparse.Namespace) -> dict[str, Any]:
    return json.loads(args.spec or "{}")


# -- data ---------------------------------------------------------------------------------------------------------
def synthetic_case(shape: Sequence[int], seed: int, blobs: int = 12) -> tuple[Any, Any]:
    """A uint16 image (noisy background, brighter ellipsoid blobs) and its uint8 0/1 blob mask."""
    import numpy as np

    rng = np.random.default_rng(seed)
    shape = tuple(int(s) for s in shape)
    mask = np.zeros(shape, dtype=np.uint8)
    for _ in range(blobs):
        radius = rng.uniform(0.06, 0.15) * np.array(shape)
        center = rng.uniform(radius, np.array(shape) - radius)
        lo = np.maximum(np.floor(center - radius).astype(int), 0)
        hi = np.minimum(np.ceil(center + radius).astype(int) + 1, shape)
        grid = np.ogrid[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))]
        inside = sum(((g - c) / r) ** 2 for g, c, r in zip(grid, center, radius, strict=True)) <= 1
        mask[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))] |= inside.astype(np.uint8)
    image = rng.normal(800, 120, size=shape).astype(np.float32)
    image += mask * rng.uniform(900, 1400)
    return np.clip(image, 0, 65535).astype(np.uint16), mask


def normalized_volume(shape: Sequence[int], seed: int = 0) -> Any:
    """:func:`synthetic_case`'s image as float32 (1, D, H, W), z-scored: what a network sees after preprocessing."""
    import numpy as np

    image = synthetic_case(shape, seed)[0].astype(np.float32)
    return ((image - image.mean()) / image.std())[None]


def make_dataset(out: Path, n: int, shape: Sequence[int], seed: int = 0) -> tuple[Path, Path]:
    """``n`` image/mask TIFF pairs under ``out/images`` and ``out/masks`` (same file names)."""
    import tifffile

    images, masks = Path(out) / "images", Path(out) / "masks"
    images.mkdir(parents=True, exist_ok=True)
    masks.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        image, mask = synthetic_case(shape, seed + i)
        tifffile.imwrite(images / f"case{i:03d}.tif", image)
        tifffile.imwrite(masks / f"case{i:03d}.tif", mask)
    return images, masks


def make_dataset_in_child(out: Path, n: int, shape: Sequence[int], seed: int = 0) -> tuple[Path, Path]:
    """:func:`make_dataset` in a subprocess, so that the driver never holds the arrays."""
    cmd = [sys.executable, str(Path(__file__)), "make-data", str(out), "--n", str(n),
           "--shape", *map(str, shape), "--seed", str(seed)]
    subprocess.run(cmd, check=True, cwd=str(ROOT))
    return Path(out) / "images", Path(out) / "masks"


# -- our components (imported lazily: never from the original's venv) ----------------------------------------------
def pools_for(patch: Sequence[int]) -> tuple[int, ...]:
    """Auto-configuration's poolings for a dataset whose median shape is this patch."""
    from biom3d.core.builtins.autoconfig import auto_config

    return auto_config(list(patch)).num_pools


def build_model(patch: Sequence[int], *, base: int = 32, cap: int = 320, deep: bool = False, seed: int = 0) -> Any:
    """unet3d-vgg-deep through the registry, as a run builds it, with auto-configuration's pooling for ``patch``."""
    import torch

    from biom3d.core.context import RunContext
    from biom3d.core.discovery import get_registry

    pools = pools_for(patch)
    ctx = RunContext(num_classes=1, patch_size=tuple(patch), num_pools=pools, seed=seed)
    torch.manual_seed(seed)
    params = {"deep_supervision": deep, "num_pools": list(pools), "base_features": base, "max_features": cap}
    return get_registry().resolve("model", "unet3d-vgg-deep").build(params, ctx), ctx


def build_training(patch: Sequence[int], *, base: int = 32, cap: int = 320, deep: bool = False,
                   seed: int = 0) -> tuple[Any, Any, Any, Any]:
    """:func:`build_model`, its loss (deep-supervision of dice-ce, or dice-ce) and the trainer's default SGD
    (Nesterov, momentum 0.99, lr 0.01, weight decay 3e-5), all resolved like a run does; and the context."""
    from biom3d.core.builtins.trainer import make_optimizer
    from biom3d.core.config import TrainConfig
    from biom3d.core.discovery import get_registry

    model, ctx = build_model(patch, base=base, cap=cap, deep=deep, seed=seed)
    loss_params = {"loss": {"name": "dice-ce"}} if deep else {}
    loss = get_registry().resolve("metric", "deep-supervision" if deep else "dice-ce").build(loss_params, ctx)
    optimizer = make_optimizer(model.parameters(), TrainConfig())
    return model, loss, optimizer, ctx


def random_batch(patch: Sequence[int], batch: int = 2, seed: int = 0) -> dict[str, Any]:
    """A batch as the dataset yields it: float image (B, 1, *patch), long label map (B, *patch) with blobs."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    image = torch.randn(batch, 1, *patch, generator=gen)
    mask = (torch.nn.functional.avg_pool3d(torch.rand(batch, 1, *patch, generator=gen), 5, 1, 2)[:, 0] > 0.52).long()
    return {"image": image, "mask": mask}


# -- reporting ----------------------------------------------------------------------------------------------------
def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Rows as an aligned table: the first column left-aligned, the others right-aligned."""
    cells = [[str(h) for h in headers]] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for j, row in enumerate(cells):
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))))
        if j == 0:
            print("  ".join("-" * w for w in widths))


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def ratio(a: float | None, b: float | None) -> str:
    """``a / b`` formatted as ``1.23x``, or n/a."""
    if a is None or b is None or b == 0 or a != a or b != b:
        return "n/a"
    return f"{a / b:.2f}x"


def cell(result: Any) -> str:
    """The table cell of a case that produced no figures: n/a (original's venv missing) or why it failed."""
    return "n/a" if result == ORIG_MISSING else str(result)


def print_orig_note(*results: Any) -> None:
    """Below a table: how to get the original's venv, when one of its cases could not run for lack of it."""
    if any(r == ORIG_MISSING for r in results):
        print(f"\noriginal biom3d: {ORIG_MISSING}")


def machine_note() -> str:
    load = os.getloadavg()
    return f"{os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} (noisy if > 0.5)"


def _main() -> None:
    parser = argparse.ArgumentParser(description="Write a synthetic TIFF dataset.")
    parser.add_argument("command", choices=["make-data"])
    parser.add_argument("out", type=Path)
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--shape", type=int, nargs=3, default=[64, 256, 256])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    make_dataset(args.out, args.n, args.shape, args.seed)


if __name__ == "__main__":
    _main()

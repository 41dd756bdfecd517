"""Preprocessing throughput: our `preprocess_dataset` (2 worker processes, and in one process) against the
original biom3d 0.1.2's `auto_config_preprocess` on the same synthetic TIFF dataset.

    python benchmarks/bench_preprocess.py [--quick] [--repeats 3] [--warmup 1] [--orig-python PATH]

Data: 20 volumes of 64x256x256 (uint16 images with ellipsoid blob masks, no spacing, so no resampling) in a
temporary folder; --quick: 6 volumes of 32x96x96. Each case is a fresh subprocess that repeats the whole
preprocessing (fingerprint, normalisation, foreground locations, folds, config) into a fresh folder: warm-up
then the median of N. Memory: the peak RSS of the largest single process (wait4 ru_maxrss) and the peak of the
sampled PSS summed over the case's process tree (workers included, shared pages counted once).

The original has no parallel option (its ``num_workers`` only goes into the training config): it runs in one
process, and writes TIFF outputs for TIFF inputs. Bar (issue: Preprocessing): ours with 2 workers >= 1.5x the
original's volumes/s on a 2-core machine, peak RSS of the largest process no higher than the original's.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    ORIG_DIR,
    ORIG_MISSING,
    THREADS,
    ChildError,
    ChildResult,
    base_parser,
    cell,
    child_spec,
    emit,
    machine_note,
    make_dataset_in_child,
    median,
    orig_available,
    print_orig_note,
    print_table,
    ratio,
    run_child,
    timed,
)

FULL = {"n": 20, "shape": (64, 256, 256)}
QUICK = {"n": 6, "shape": (32, 96, 96)}


def main() -> None:
    args = base_parser(__doc__, repeats=3).parse_args()
    if args.child:
        _child(child_spec(args), args.warmup, args.repeats)
        return
    size = QUICK if args.quick else FULL
    print(f"preprocessing {size['n']} volumes of {'x'.join(map(str, size['shape']))}; "
          f"warm-up {args.warmup}, median of {args.repeats}; {machine_note()}")
    with tempfile.TemporaryDirectory(prefix="bench-preprocess-") as tmp:
        images, masks = make_dataset_in_child(Path(tmp) / "data", size["n"], size["shape"])
        results = {
            "biom3d, 2 workers": _ours(args, images, masks, Path(tmp), workers=2),
            "biom3d, 1 process": _ours(args, images, masks, Path(tmp), workers=1),
            "original 0.1.2 (1 process)": _original(args, images, masks, Path(tmp)),
        }
    _report(results, size["n"])


def _ours(args, images: Path, masks: Path, tmp: Path, *, workers: int) -> ChildResult | str:
    spec = {"images": str(images), "masks": str(masks), "work": str(tmp / f"ours-{workers}"), "workers": workers}
    cmd = [sys.executable, __file__, "--child", "ours", "--spec", json.dumps(spec),
           "--warmup", str(args.warmup), "--repeats", str(args.repeats)]
    return _measure(cmd)


def _original(args, images: Path, masks: Path, tmp: Path) -> ChildResult | str:
    if not orig_available(args.orig_python):
        return ORIG_MISSING
    cmd = [args.orig_python, str(ORIG_DIR / "preprocess.py"), "--images", str(images), "--masks", str(masks),
           "--work", str(tmp / "orig"), "--warmup", str(args.warmup), "--repeats", str(args.repeats)]
    return _measure(cmd, orig=True)


def _measure(cmd: list[str], *, orig: bool = False) -> ChildResult | str:
    try:
        return run_child(cmd, orig=orig)
    except ChildError as exc:
        print(exc, file=sys.stderr)
        return "failed (see above)"


def _child(spec: dict, warmup: int, repeats: int) -> None:
    """One case: preprocess the dataset into a fresh folder, ``warmup + repeats`` times."""
    import torch

    from biom3d.core.stages.preprocess import preprocess_dataset

    torch.set_num_threads(THREADS)
    out = Path(spec["work"]) / "out"

    def setup() -> None:
        shutil.rmtree(out, ignore_errors=True)

    def once() -> None:
        preprocess_dataset(Path(spec["images"]), Path(spec["masks"]), out, num_classes=1,
                           workers=spec["workers"], progress=False)

    times = timed(once, warmup=warmup, repeats=repeats, setup=setup)
    outputs = len(list((out / "images").iterdir()))
    shutil.rmtree(out, ignore_errors=True)
    emit({"times": times, "outputs": outputs})


def _report(results: dict[str, ChildResult | str], n: int) -> None:
    speed = {k: n / median(r.data["times"]) for k, r in results.items() if isinstance(r, ChildResult)}
    orig = speed.get("original 0.1.2 (1 process)")
    single = speed.get("biom3d, 1 process")
    rows = []
    for name, res in results.items():
        if not isinstance(res, ChildResult):
            rows.append([name, cell(res), "", "", "", "", "", ""])
            continue
        times = res.data["times"]
        rows.append([name, median(times), min(times), speed[name], ratio(speed[name], orig),
                     ratio(speed[name], single), f"{res.peak_mib:.0f}", f"{res.total_mib:.0f}"])
    print()
    print_table(["case", "median s", "min s", "volumes/s", "vs original", "vs ours 1-proc",
                 "peak RSS MiB (largest proc)", "peak PSS MiB (all procs)"], rows)
    print_orig_note(*results.values())


if __name__ == "__main__":
    main()

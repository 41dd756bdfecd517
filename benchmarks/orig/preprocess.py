"""Times the ORIGINAL biom3d 0.1.2 preprocessing (``auto_config_preprocess``: fingerprint, preprocessing, folds,
auto-configuration) on a TIFF dataset; run by the original's python from ``benchmarks/bench_preprocess.py``.

    <orig-python> benchmarks/orig/preprocess.py --images DIR --masks DIR --work DIR [--warmup 1] [--repeats 3] [--keep]

The original has no parallel preprocessing (its ``num_workers`` only goes into the training config), so this
runs in one process. Prints one JSON line (``BENCH_RESULT {...}``) with the times in seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import THREADS, emit, timed  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=Path, required=True)
    parser.add_argument("--masks", type=Path, required=True)
    parser.add_argument("--work", type=Path, required=True, help="scratch folder for the outputs")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--keep", action="store_true", help="keep the last run's outputs (for the dataset benchmark)")
    args = parser.parse_args()

    import torch

    from biom3d.preprocess import auto_config_preprocess

    torch.set_num_threads(THREADS)
    run = args.work / "orig-run"

    def setup() -> None:
        # the original writes next to its inputs (images_out, masks_out, fg_out, folds.csv): link them in a
        # fresh folder (passing output paths crashes 0.1.2 when fg_outpath is not given)
        shutil.rmtree(run, ignore_errors=True)
        run.mkdir(parents=True)
        (run / "images").symlink_to(args.images.resolve(), target_is_directory=True)
        (run / "masks").symlink_to(args.masks.resolve(), target_is_directory=True)

    def once() -> None:
        with contextlib.redirect_stdout(io.StringIO()):  # its prints and progress bar
            auto_config_preprocess(img_path=str(run / "images"), msk_path=str(run / "masks"), num_classes=1,
                                   config_dir=str(run / "config"), base_config=None)

    times = timed(once, warmup=args.warmup, repeats=args.repeats, setup=setup)
    outputs = sorted(p.name for p in (run / "images_out").iterdir())
    paths = {k: str(run / d) for k, d in
             (("images", "images_out"), ("masks", "masks_out"), ("fg", "fg_out"), ("folds", "folds.csv"))}
    if not args.keep:
        shutil.rmtree(run, ignore_errors=True)
    emit({"times": times, "outputs": len(outputs), "paths": paths})


if __name__ == "__main__":
    main()

"""Patches/s of the ORIGINAL biom3d 0.1.2 training dataset (``SemSeg3DPatchFast``, registered as SegPatchFast)
with its default settings (augmentation on, rotation patch from its ``get_aug_patch``, fg_rate 0.33), read
through a torch DataLoader as its config does (batch 2, shuffle, drop_last); run by the original's python from
``benchmarks/bench_data_pipeline.py`` on a folder written by the original's preprocessing.

    <orig-python> benchmarks/orig/dataset.py --images DIR --masks DIR --fg DIR --folds CSV --patch 64 64 64
        [--workers 0] [--warmup 2] [--windows 3] [--per-window 4]

Prints one JSON line (``BENCH_RESULT {...}``) with the patches/s of each window.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import THREADS, emit, loader_rates  # noqa: E402

BATCH = 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    for name in ("images", "masks", "fg", "folds"):
        parser.add_argument(f"--{name}", required=True)
    parser.add_argument("--patch", type=int, nargs=3, required=True)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--warmup", type=int, default=2, help="untimed batches first")
    parser.add_argument("--windows", type=int, default=3)
    parser.add_argument("--per-window", type=int, default=4, help="batches per timed window")
    args = parser.parse_args()

    import torch

    from biom3d.auto_config import get_aug_patch
    from biom3d.datasets.semseg_patch_fast import SemSeg3DPatchFast

    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    batches = args.warmup + args.windows * args.per_window
    with contextlib.redirect_stdout(io.StringIO()):  # it prints its folds and file names
        dataset = SemSeg3DPatchFast(
            img_path=args.images, msk_path=args.masks, fg_path=args.fg, folds_csv=args.folds, fold=0,
            batch_size=BATCH, patch_size=list(args.patch), aug_patch_size=get_aug_patch(args.patch),
            nbof_steps=batches, train=True, use_aug=True, use_softmax=True, load_data=False,
        )
    loader = torch.utils.data.DataLoader(dataset, batch_size=BATCH, shuffle=True, drop_last=True,
                                         num_workers=args.workers)
    rates = loader_rates(loader, batch=BATCH, warmup=args.warmup, windows=args.windows, per_window=args.per_window)
    emit({"rates": rates, "aug_patch": [int(a) for a in get_aug_patch(args.patch)]})


if __name__ == "__main__":
    main()

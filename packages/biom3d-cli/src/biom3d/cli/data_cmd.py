"""`biom3d autoconfig` and `biom3d preprocess`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer


def autoconfig(median: tuple[float, float, float], *, budget: dict[str, int], num_images: int | None,
               as_json: bool) -> None:
    """``budget``: the max_dim/max_pool/max_batch flags given; the others keep auto_config's defaults."""
    from biom3d.core.builtins.autoconfig import auto_config
    from biom3d.core.errors import InputError

    try:
        result = auto_config(median, num_images=num_images, **budget)
    except ValueError as exc:
        raise InputError(f"--median {' '.join(map(str, median))}: {exc}") from exc
    if as_json:
        typer.echo(json.dumps(result.as_dict()))
        return
    typer.echo(f"median shape     {_fmt(median)}")
    typer.echo(f"patch size       {_fmt(result.patch_size)}")
    typer.echo(f"poolings         {_fmt(result.num_pools)}")
    typer.echo(f"batch size       {result.batch_size}")
    typer.echo(f"augment. patch   {_fmt(result.aug_patch_size)}")


def preprocess(*, images: Path, masks: Path, num_classes: int, out: Path | None, params: dict[str, Any], **kw) -> None:
    from pydantic import ValidationError

    from biom3d.core.errors import InputError
    from biom3d.core.stages.preprocess import preprocess_dataset
    from biom3d.core.units import shown

    out = out or Path("preprocessed") / images.resolve().name
    try:
        result = preprocess_dataset(images, masks, out, num_classes=num_classes, params=params, **kw)
    except ValidationError as exc:
        raise InputError("; ".join(f"--{'-'.join(map(str, e['loc'])).replace('_', '-')}: {e['msg']}"
                                   for e in exc.errors(include_url=False))) from exc
    fp, plan = result.fingerprint, result.plan
    axes = ", ".join("none" if a is None else str(a) for a in fp.get("channel_axis", ["?"]))
    typer.echo(f"{fp['num_images']} case(s): {result.processed} processed, {result.skipped} already done")
    typer.echo(f"stack            {result.stack or 'none (components named in the config)'}")
    typer.echo(f"channels         {fp['in_channels']} (channel axis in the files: {axes})")
    unit = shown(fp.get("spacing_unit"))
    typer.echo(f"median spacing   {_fmt(fp['spacing']) + (' ' + unit if unit else '') if fp['spacing'] else 'unknown (no resampling)'}")
    typer.echo(f"median shape     {_fmt(fp['median_shape'])}")
    typer.echo(f"patch size       {_fmt(plan.get('patch_size', []))}  poolings {_fmt(plan.get('num_pools', []))}  "
               f"batch {plan.get('batch_size', '-')}")
    typer.echo(f"output           {result.out_dir}")
    typer.echo(f"config           {result.config_path}")
    typer.echo(f"next:            biom3d train {result.config_path}")


def _fmt(values) -> str:
    return " x ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)

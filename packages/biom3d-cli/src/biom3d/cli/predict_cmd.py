"""`biom3d predict` and `biom3d eval`."""

from __future__ import annotations

from pathlib import Path

import typer


def predict(runs: list[Path], input: Path, output: Path, *, shard: str | None = None, **kw) -> None:
    from biom3d.core import distributed
    from biom3d.core.stages.predict import predict as run_predict

    part = distributed.parse_shard(shard) if shard is not None else None
    written = run_predict(runs, input, output, shard=part, **kw)
    what = "ensemble of " + str(len(runs)) + " runs" if len(runs) > 1 else str(runs[0])
    world = distributed.current()
    share = (f", part {shard}" if shard else "") + (f", rank {world.rank} of {world.size}" if world.distributed else "")
    typer.echo(f"{len(written)} mask(s) written to {output} ({what}{share})")


def evaluate(pred: Path, truth: Path, *, num_classes: int | None, csv: Path | None, overwrite: bool = False,
             reader: str | None = None, distances: bool = False) -> None:
    from biom3d.core.stages.evaluate import evaluate as run_eval

    csv = csv or pred / "eval.csv"
    report = run_eval(pred, truth, num_classes=num_classes, csv_path=csv, overwrite=overwrite, reader=reader,
                      distances=distances)
    typer.echo(report.table())
    typer.echo(f"table written to {csv}")

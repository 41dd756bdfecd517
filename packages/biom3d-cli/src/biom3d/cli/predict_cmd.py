"""`biom3d predict` and `biom3d eval`."""

from __future__ import annotations

from pathlib import Path

import typer


def predict(runs: list[Path], input: Path, output: Path, **kw) -> None:
    from biom3d.core.stages.predict import predict as run_predict

    written = run_predict(runs, input, output, **kw)
    what = "ensemble of " + str(len(runs)) + " runs" if len(runs) > 1 else str(runs[0])
    typer.echo(f"{len(written)} mask(s) written to {output} ({what})")


def evaluate(pred: Path, truth: Path, *, num_classes: int | None, csv: Path | None, overwrite: bool = False,
             reader: str | None = None) -> None:
    from biom3d.core.stages.evaluate import evaluate as run_eval

    csv = csv or pred / "eval.csv"
    report = run_eval(pred, truth, num_classes=num_classes, csv_path=csv, overwrite=overwrite, reader=reader)
    typer.echo(report.table())
    typer.echo(f"table written to {csv}")

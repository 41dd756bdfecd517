"""`biom3d export`: what the ``biom3d.cli_commands`` entry point names. Typer and the stdlib only, since
`biom3d --help` imports this module to list the command; torch, ONNX and bioimageio.spec are imported when the
command runs."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated, Literal

import typer

HELP = "Export a trained run as TorchScript, ONNX or a bioimage.io package that `biom3d predict` also reads."


class Format(StrEnum):
    torchscript = "torchscript"
    onnx = "onnx"
    bioimageio = "bioimageio"


def register(app: typer.Typer, name: str = "export") -> None:
    """Add ``biom3d <name>`` to ``app``."""

    @app.command(name, help=HELP)
    def export(
        run: Annotated[Path, typer.Argument(help="Run folder (`biom3d train` wrote it).")],
        formats: Annotated[list[Format], typer.Option(
            "--format", "-f", help="torchscript (.pt), onnx (.onnx) or bioimageio (.bioimageio.zip); repeat for "
                                   "several.")],
        output: Annotated[Path, typer.Option(
            "--output", "-o", help="Folder for <name>.pt/.onnx/.bioimageio.zip (created), or, for one format, the "
                                   "file itself.")],
        checkpoint: Annotated[Literal["best", "last"] | None, typer.Option(
            help="Weights to export [default: best when the run has one, else the newest].")] = None,
        opset: Annotated[int | None, typer.Option(help="ONNX opset [default: 17].", min=7, max=20)] = None,
        overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace existing exports.")] = False,
        author: Annotated[list[str] | None, typer.Option(
            "--author", help="bioimage.io: an author's name (repeat for several) [default: your user name].")] = None,
        license: Annotated[str, typer.Option(help="bioimage.io: SPDX license of the weights.")] = "CC-BY-4.0",
    ) -> None:
        """Each TorchScript/ONNX file gets a .json sidecar with the patch size, classes, normalisation, spacing
        and post-processing; the bioimage.io package is validated with bioimageio.spec. Recorded in
        RUN/exports.json."""
        from biom3d.export.exporter import export as run_export

        written = run_export(run, [f.value for f in formats], output, checkpoint=checkpoint, opset=opset, overwrite=overwrite,
                             authors=author or (), license=license)
        for w in written:
            extra = f" (+ {Path(w.record['sidecar']).name})" if w.record.get("sidecar") else ""
            dynamic = "any size patch + n * stride" if w.record.get("dynamic_spatial") else "patch size only"
            typer.echo(f"{w.format}: {w.path}{extra}; input {dynamic}")
        typer.echo(f"recorded in {Path(run) / 'exports.json'}")

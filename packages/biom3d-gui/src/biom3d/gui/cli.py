"""`biom3d gui`: what the ``biom3d.cli_commands`` entry point names. Typer and the stdlib only, since
`biom3d --help` imports this module to list the command; the server (FastAPI, uvicorn) is imported when the
command runs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

HELP = "Open biom3d in a web browser: scan data, train, watch curves, predict and evaluate (local or remote)."


def register(app: typer.Typer, name: str = "gui") -> None:
    """Add ``biom3d <name>`` to ``app``."""

    @app.command(name, help=HELP)
    def gui(
        host: Annotated[str, typer.Option(help="Address to listen on; anything but localhost needs the token (on a "
                                          "server, prefer 127.0.0.1 and `ssh -L`).")] = "127.0.0.1",
        port: Annotated[int, typer.Option(help="Port (0: any free one).", min=0, max=65535)] = 8765,
        root: Annotated[list[Path] | None, typer.Option(
            "--root", help="Folder the page may browse and read (repeat for several) [default: the current "
                           "folder].")] = None,
        runs_dir: Annotated[Path | None, typer.Option(help="Folder of runs, uploads and predictions [default: "
                                                      "runs].")] = None,
        no_browser: Annotated[bool, typer.Option("--no-browser", help="Do not open a browser (on a server).")] = False,
        no_token: Annotated[bool, typer.Option("--no-token", help="No token (localhost only; anyone on this machine "
                                               "can then use the page).")] = False,
        max_upload_mb: Annotated[float, typer.Option(help="Largest upload per request, in MiB.", min=1)] = 2048,
        jobs_per_device: Annotated[int, typer.Option(help="Jobs running at once on each device; the others wait.",
                                                     min=1)] = 1,
    ) -> None:
        """The token is printed with the address (or set it with $BIOM3D_GUI_TOKEN)."""
        from biom3d.gui.server import serve

        serve(host, port, root or [], no_browser=no_browser, runs_dir=runs_dir, no_token=no_token,
              max_upload_mb=max_upload_mb, jobs_per_device=jobs_per_device)

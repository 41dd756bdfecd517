"""`biom3d train`: new run, --resume RUN_DIR, or --finetune RUN_DIR with a new config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer


def train(config: Path | None, *, resume: Path | None, finetune: Path | None, overrides: dict[str, Any],
          runs_dir: Path | None, strict_versions: bool = False) -> None:
    from biom3d.core.builder import Builder
    from biom3d.core.errors import InputError

    overrides = {k: v for k, v in overrides.items() if v is not None}
    if resume is not None:
        if config is not None or finetune is not None:
            raise InputError("--resume continues a run with its own config: give no CONFIG and no --finetune")
        result = Builder.resume(resume, overrides=overrides, strict_versions=strict_versions)
    elif config is None:
        raise InputError("give a CONFIG to train (e.g. the config.yaml `biom3d preprocess` wrote), or --resume RUN_DIR")
    elif finetune is not None:
        result = Builder.finetune(finetune, config, overrides=overrides, runs_dir=runs_dir,
                                  strict_versions=strict_versions)
    else:
        result = Builder(config, overrides=overrides).train(runs_dir=runs_dir)
    typer.echo(f"run folder: {result.run_dir}")

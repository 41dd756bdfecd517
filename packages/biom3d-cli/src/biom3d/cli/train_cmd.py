"""`biom3d train`: new run, --resume RUN_DIR, CONFIG --resume RUN_DIR (start the run there, or continue it),
or --finetune RUN_DIR with a new config. Under torchrun every rank runs this (see biom3d.core.distributed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

RELOCATED = "data.preprocessed"  # the one data key a resume takes: the run's own data, moved (checked by core)


def train(config: Path | None, *, resume: Path | None, finetune: Path | None, overrides: dict[str, Any],
          runs_dir: Path | None, strict_versions: bool = False) -> None:
    from biom3d.core.builder import Builder
    from biom3d.core.errors import InputError

    overrides = {k: v for k, v in overrides.items() if v is not None}
    if resume is not None and config is not None and finetune is None and not (resume / "config.yaml").is_file():
        # CONFIG --resume DIR: start the run in DIR, or continue it when DIR holds it already, so that one command
        # line does both (what torchrun --max-restarts re-runs); every rank looks before any of them writes
        if resume.exists() and any(resume.iterdir()):
            raise InputError(f"--resume {resume}: the folder is neither empty nor a run folder (no config.yaml); "
                             "give a new folder to train CONFIG in, or a run folder to continue")
        result = Builder(config, overrides=overrides).train(run_dir=resume)
    elif resume is not None:
        if finetune is not None:
            raise InputError("--resume continues a run with its own config: give no --finetune")
        fixed = sorted(k for k in overrides if not k.startswith("train.") and k != RELOCATED)
        if fixed:
            raise InputError(f"--resume continues a run with its own config: only train.* settings change on it (and "
                             f"{RELOCATED}, the new place of its data), not {', '.join(fixed)}; start a new run (or "
                             f"--finetune {resume}) to change them")
        if RELOCATED in overrides:
            if not isinstance(overrides[RELOCATED], str) or not overrides[RELOCATED]:
                raise InputError(f"--set {RELOCATED}= takes the new place of the run's preprocessed folder, not "
                                 f"{overrides[RELOCATED]!r}")
            overrides[RELOCATED] = str(Path(overrides[RELOCATED]).expanduser().resolve())  # the shell's place
        if config is not None:
            import logging

            logging.getLogger("biom3d").info("%s holds a run already: continuing it with its own config.yaml (%s "
                                             "only starts a run there)", resume, config)
        result = Builder.resume(resume, overrides=overrides, strict_versions=strict_versions)
    elif config is None:
        raise InputError("give a CONFIG to train (e.g. the config.yaml `biom3d preprocess` wrote), or --resume RUN_DIR")
    elif finetune is not None:
        result = Builder.finetune(finetune, config, overrides=overrides, runs_dir=runs_dir,
                                  strict_versions=strict_versions)
    else:
        result = Builder(config, overrides=overrides).train(runs_dir=runs_dir)
    from biom3d.core.distributed import is_main

    if is_main():  # under torchrun: once, not once per rank
        typer.echo(f"run folder: {result.run_dir}")

"""`biom3d config validate | show | schema`: configs without torch."""

from __future__ import annotations

import json
from pathlib import Path

import typer


def validate_files(files: list[Path]) -> None:
    from biom3d.core.config import load_config
    from biom3d.core.errors import ConfigError

    failed: list[ConfigError] = []
    for file in files:
        try:
            cfg = load_config(file)
        except ConfigError as exc:
            failed.append(exc)
            continue
        typer.echo(f"{file}: valid (stack {cfg.stack or '-'}: model {cfg.model.name}, loss {cfg.loss.name}, "
                   f"dataset {cfg.dataset.name}, trainer {cfg.trainer.name})")
    for exc in failed[:-1]:  # every file's problems are printed; the last one sets the exit code
        typer.echo(f"error: {exc}", err=True)
    if failed:
        raise failed[-1]


def show(file: Path) -> None:
    from biom3d.core.config import load_config

    typer.echo(load_config(file).to_yaml().rstrip())


def schema(output: Path | None, *, overwrite: bool = False) -> None:
    from biom3d.core.atomic import atomic_write_text
    from biom3d.core.errors import InputError
    from biom3d.core.schema import config_schema

    if output is not None and output.exists() and not overwrite:
        raise InputError(f"{output} exists; pass --overwrite to replace it")
    text = json.dumps(config_schema(), indent=2)
    if output is None:
        typer.echo(text)
        return
    atomic_write_text(output, text + "\n")
    typer.echo(f"wrote {output}")


def import_legacy(old: Path, output: Path | None, *, overwrite: bool) -> None:
    import yaml

    from biom3d.cli.legacy import import_legacy as convert
    from biom3d.cli.legacy import read_legacy
    from biom3d.core.config import validate
    from biom3d.core.errors import ConfigError, InputError

    if not old.is_file():
        raise InputError(f"{old} does not exist")
    try:
        original, read_notes = read_legacy(old)  # a .py config is parsed, never run
        raw, notes = convert(original)
    except (ValueError, yaml.YAMLError) as exc:
        raise ConfigError(str(exc), source=str(old)) from exc
    notes = read_notes + notes
    validate(raw)  # the converted config must work with the installed plugins
    text = "# Imported from " + str(old) + " by `biom3d config import`\n" + yaml.safe_dump(
        raw, sort_keys=False, default_flow_style=None)
    for note in notes:
        typer.echo(f"note: {note}", err=True)
    if output is None:
        typer.echo(text.rstrip())
        return
    if output.exists() and not overwrite:
        raise InputError(f"{output} exists; pass --overwrite to replace it")
    from biom3d.core.atomic import atomic_write_text

    atomic_write_text(output, text)
    typer.echo(f"wrote {output}", err=True)

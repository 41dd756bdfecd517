"""A run resumed on preprocessed data at another place than it trained on: a moved or copied pipeline folder or
project. The run keeps copies of what defines its data (fingerprint.json, folds.csv), so the new folder can be
proved to hold the same data before training goes on with it; anything else would mix two datasets in one run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from biom3d.core.errors import InputError
from biom3d.core.runs import CONFIG, FINGERPRINT, FOLDS, read_record

PREPROCESS_RECORD = "preprocess.json"


def require_preprocessed(run_dir: Path, recorded: str | None, wanted: str | None, preprocessor: dict[str, Any],
                         folds: Path | None = None) -> None:
    """Before a resume writes anything: the preprocessed folder ``wanted`` is there and, when it is not the
    ``recorded`` one the run trained on, holds the same data. ``preprocessor`` is the run's envelope
    (name, params); ``folds`` the run's data.folds when it gave its own."""
    if wanted is None:
        if recorded:
            raise InputError(f"{run_dir} trains on the preprocessed data {recorded}: data.preprocessed cannot be "
                             "unset on resume; give the folder's new place if it moved")
        return
    if Path(wanted).resolve() == Path(recorded or "").resolve():
        if not Path(wanted).is_dir():
            raise InputError(f"{run_dir} trained on the preprocessed data {wanted}, which is not there any more. If "
                             f"it moved, give its new place: biom3d train --resume {run_dir} --set "
                             "data.preprocessed=NEW_PLACE (a `biom3d run` pipeline folder moved whole finds its own)")
        return
    differences = data_differences(run_dir, Path(wanted), preprocessor, folds)
    if differences:
        raise InputError(f"data.preprocessed {wanted} does not hold the data {run_dir} trained on ({recorded}): "
                         f"{'; '.join(differences)}. A resumed run goes on with its own data; train a new run (or "
                         f"--finetune {run_dir}) on other data")


def data_differences(run_dir: Path, folder: Path, preprocessor: dict[str, Any], folds: Path | None = None) -> list[str]:
    """Why ``folder`` does not hold the preprocessed data of ``run_dir`` (nothing: the same); ``folds`` is the
    run's own data.folds, when it gave one, which its copy is of. Without the run's copies there is no proof."""
    if not (folder / "images").is_dir():
        return [f"{folder} holds no preprocessed images/ folder"]
    problems = []
    for name, theirs in ((FINGERPRINT, folder / FINGERPRINT), (FOLDS, folds or folder / FOLDS)):
        if not (run_dir / name).is_file():
            problems.append(f"the run keeps no copy of its {name} to compare with")
        elif _read(theirs) != _read(run_dir / name) and not (name == FINGERPRINT and _rewritten(run_dir / name, theirs)):
            problems.append(f"{theirs.name if theirs.parent == folder else theirs} differs from the run's copy")
    record = read_record(folder / PREPROCESS_RECORD)
    if record.get("preprocessor") not in (None, preprocessor.get("name")):
        problems.append(f"it was preprocessed by {record['preprocessor']}, the run by {preprocessor.get('name')}")
    params, ran = record.get("params") or {}, preprocessor.get("params") or {}
    problems += [f"preprocessor.params.{key}: {json.dumps(params[key])} there, {json.dumps(ran[key])} in the run"
                 for key in sorted(set(params) & set(ran)) if params[key] != ran[key]]  # one side lacks a newer key
    return problems


def recorded_preprocessed(run_dir: Path) -> str | None:
    """data.preprocessed as the run's config.yaml names it."""
    return recorded_data(run_dir).get("preprocessed")


def recorded_data(run_dir: Path) -> dict[str, Any]:
    """The run's config.yaml's data paths."""
    from biom3d.core.config import read_yaml

    data = read_yaml(run_dir / CONFIG).get("data")
    return data if isinstance(data, dict) else {}


def _rewritten(copy: Path, theirs: Path) -> bool:
    """The run's fingerprint copy is the folder's, as an earlier version wrote it (the folder was re-preprocessed
    since by a version that records more statistics, such as ``spacing_unit``)."""
    from biom3d.core.stages.preprocess_folder import earlier_of

    now = read_record(theirs)
    return bool(now) and earlier_of(read_record(copy), now)


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None

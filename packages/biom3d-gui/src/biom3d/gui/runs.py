"""The runs folder as the GUI sees it: every run found on disk, so a restarted server lists finished and
interrupted runs whoever started them.

Two kinds of folder hold a run: a `biom3d run` pipeline folder (``config.yaml``, ``pipeline.json``, the run
in ``run/``, or one run per fold in ``folds/fold-K/`` when it cross-validated), which is what the GUI's
training starts, and a `biom3d train` run folder (``config.yaml``, ``plugins.json``). Their state comes from their files alone: finished when every planned epoch is logged and
the weights are written (and, for a pipeline, its train stage is done), else interrupted, and resumable.
"""

from __future__ import annotations

import csv
import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from biom3d.core.errors import InputError

#: folders of the runs folder that the GUI itself writes (not runs)
OWN_FOLDERS = (".biom3d-gui", "uploads", "predictions", "evaluations")
RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class NotFound(InputError):
    """No such run, job or file (404)."""


@dataclass
class RunInfo:
    id: str  # the folder's name in the runs folder
    kind: str  # "pipeline" (biom3d run) or "train" (biom3d train)
    folder: str
    run_dir: str  # the training run folder (pipeline: <folder>/run)
    name: str
    modified: float
    epochs: int | None  # planned
    epochs_done: int
    status: str  # finished, interrupted, running, queued, failed
    has_checkpoint: bool
    best: dict[str, float] = field(default_factory=dict)  # best validation value per metric column
    stack: str | None = None
    model: str | None = None
    snapshots: list[str] = field(default_factory=list)
    curves: bool = False
    predictions: str | None = None  # a pipeline's own predictions folder
    message: str = ""

    def public(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def device(self) -> str:
        """The device the run trains on (its config's train.device)."""
        config = read_config(Path(self.run_dir) / "config.yaml") or read_config(Path(self.folder) / "config.yaml") or {}
        return str((config.get("train") or {}).get("device") or "auto")


def run_folder(runs_dir: Path, run_id: str) -> Path:
    """The folder of run ``run_id``: a plain name of the runs folder, nothing else."""
    if not RUN_ID.match(run_id) or run_id in OWN_FOLDERS:
        raise InputError(f"run {run_id!r}: not a run name")
    folder = (Path(runs_dir) / run_id).resolve()
    if folder.parent != Path(runs_dir).resolve() or not (folder / "config.yaml").is_file():
        raise NotFound(f"no run named {run_id!r} in {runs_dir}")
    return folder


def list_runs(runs_dir: Path) -> list[RunInfo]:
    """Every run of the runs folder, newest first."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        return []
    found = []
    for folder in runs_dir.iterdir():
        if folder.name in OWN_FOLDERS or not RUN_ID.match(folder.name) or not folder.is_dir():
            continue
        info = read_run(folder)
        if info is not None:
            found.append(info)
    return sorted(found, key=lambda r: r.modified, reverse=True)


def read_run(folder: Path) -> RunInfo | None:
    """What the files of ``folder`` say about its run; None when it is not a run."""
    if not (folder / "config.yaml").is_file():
        return None
    if (folder / "plugins.json").is_file():
        kind, run_dir = "train", folder
    elif (folder / "preprocess.json").is_file():
        return None  # a `biom3d preprocess` output folder
    else:  # `biom3d run` writes config.yaml first, pipeline.json once a stage is done
        kind, run_dir = "pipeline", _pipeline_run_dir(folder)
    config = read_config(run_dir / "config.yaml") or read_config(folder / "config.yaml") or {}
    rows = read_log(run_dir)
    epochs = (config.get("train") or {}).get("epochs")
    checkpoints = run_dir / "checkpoints"
    has_checkpoint = checkpoints.is_dir() and any(checkpoints.glob("*.pt"))
    trained = bool(rows) and isinstance(epochs, int) and len(rows) >= epochs and (checkpoints / "best.pt").is_file()
    if kind == "pipeline":
        state = _json(folder / "pipeline.json")
        trained = trained and bool((state.get("train") or {}).get("done"))
    snapshots = sorted(p.name for p in (run_dir / "snapshots").glob("*.png")  # not the dot-named temporary of
                       if not p.name.startswith(".")) if (run_dir / "snapshots").is_dir() else []  # one being written
    model = config.get("model")
    stamp = max((p.stat().st_mtime for p in (run_dir / "log.csv", run_dir / "config.yaml", folder / "config.yaml")
                 if p.is_file()), default=folder.stat().st_mtime)
    predictions = folder / "predictions"
    return RunInfo(
        id=folder.name, kind=kind, folder=str(folder), run_dir=str(run_dir), name=str(config.get("name") or folder.name),
        modified=stamp, epochs=epochs if isinstance(epochs, int) else None, epochs_done=len(rows),
        status="finished" if trained else "interrupted", has_checkpoint=has_checkpoint, best=_best(rows),
        stack=config.get("stack"), model=model.get("name") if isinstance(model, dict) else model,
        snapshots=snapshots, curves=(run_dir / "curves.png").is_file(),
        predictions=str(predictions) if kind == "pipeline" and predictions.is_dir() else None,
    )


def _pipeline_run_dir(folder: Path) -> Path:
    """A pipeline's run/, or when it cross-validates, the fold run trained last: the one whose progress the page
    shows (the folds train one after the other; predicting with the pipeline folder ensembles them all)."""
    from biom3d.core.runs import PIPELINE_RUN, pipeline_runs

    found = pipeline_runs(folder)
    return found[-1] if found else folder / PIPELINE_RUN


def read_log(run_dir: Path) -> list[dict[str, float]]:
    """log.csv as rows of numbers (empty cells left out); written atomically, so never a torn line."""
    try:
        text = (Path(run_dir) / "log.csv").read_text(encoding="utf-8")
    except OSError:
        return []
    rows = []
    for row in csv.DictReader(text.splitlines()):
        values = {}
        for key, value in row.items():
            try:
                number = float(value)
            except (TypeError, ValueError):
                continue
            if math.isfinite(number):  # JSON has no NaN: a missing point, not a broken page
                values[key] = number
        rows.append(values)
    return rows


def metric_columns(rows: list[dict[str, float]]) -> list[str]:
    """Validation metrics of a log (``val_dice``, ``val_iou``; per-class ``val_dice_1`` left out)."""
    keys = {k for r in rows for k in r}
    return sorted(k for k in keys if k.startswith("val_") and k != "val_loss" and k.count("_") == 1)


def _best(rows: list[dict[str, float]]) -> dict[str, float]:
    out = {k: max(r[k] for r in rows if k in r) for k in metric_columns(rows)}
    losses = [r["val_loss"] for r in rows if "val_loss" in r]
    if losses:
        out["val_loss"] = min(losses)
    return out


def read_config(path: Path) -> dict[str, Any] | None:
    """A run's config.yaml as a mapping (not validated: listing runs needs no plugin), None if unreadable."""
    from biom3d.core.config import read_yaml
    from biom3d.core.errors import ConfigError

    if not path.is_file():
        return None
    try:
        return read_yaml(path)
    except ConfigError:
        return None


def _json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}

"""Run folders: create them, record what produced them, and check they can be used again.

A run folder holds all that is needed to reproduce and to predict: the resolved config (qualified ids, every
default, absolute data paths), plugins.json, the data fingerprint and folds, checkpoints, logs and pictures.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import yaml

from biom3d.core.atomic import atomic_copy, atomic_write_text
from biom3d.core.config import SLOTS, Config
from biom3d.core.errors import InputError, PluginError, RunError
from biom3d.core.registry import state_phrase

log = logging.getLogger("biom3d")
CONFIG, PLUGINS, FINGERPRINT, FOLDS = "config.yaml", "plugins.json", "fingerprint.json", "folds.csv"
# a `biom3d run` pipeline folder: its stages' record, and its trained run (or one per fold, cross-validating)
PIPELINE, PIPELINE_RUN, PIPELINE_FOLDS = "pipeline.json", "run", "folds"


def new_run_dir(runs_dir: Path, name: str) -> Path:
    """``runs/<name>-<timestamp>``, never an existing folder."""
    runs_dir = Path(runs_dir)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = runs_dir / f"{name}-{stamp}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    path.mkdir(parents=True)
    return path


def write_run_files(run_dir: Path, config: Config, registry, *, data_dir: Path | None, folds: Path | None) -> None:
    atomic_write_text(run_dir / CONFIG, portable_yaml(config))
    atomic_write_text(run_dir / PLUGINS, json.dumps(plugins_record(config, registry), indent=2))
    if data_dir is not None and (data_dir / FINGERPRINT).is_file():
        atomic_copy(data_dir / FINGERPRINT, run_dir / FINGERPRINT)
    if folds is not None and folds.is_file():
        atomic_copy(folds, run_dir / FOLDS)


def portable_yaml(config: Config) -> str:
    """The resolved config with every data path made absolute, so the run folder stands on its own."""
    data = config.model_dump(mode="json")
    for key, value in data["data"].items():
        if value is not None:
            data["data"][key] = str(config.path(value).resolve())
    return "# Resolved by biom3d: qualified ids, every default filled in.\n" + yaml.safe_dump(
        data, sort_keys=False, default_flow_style=None
    )


def used_components(config: Config) -> list[str]:
    """Every qualified id the run uses, its stack's included (so the stack's plugin is recorded too)."""
    ids = [config.stack] if config.stack else []
    for slot in SLOTS:
        value = getattr(config, slot)
        for env in value if isinstance(value, list) else [value]:
            if env is not None:
                ids.append(env.name)
    return ids


def plugins_record(config: Config, registry) -> dict[str, Any]:
    return {
        "stack": config.stack,
        "used": registry.used_plugins(used_components(config)),
        "installed": {p.name: {"dist": p.dist, "version": p.version, "state": p.state}
                      for p in registry.plugins.values()},
    }


def check_plugins(run_dir: Path, registry, *, strict_versions: bool = False) -> None:
    """Compare the plugins a run used with what is installed. Missing, failed or blocked: an error up front that
    says how to fix it. Another version: one warning per plugin (an error with ``strict_versions``)."""
    path = Path(run_dir) / PLUGINS
    if not path.is_file():
        return
    used = json.loads(path.read_text(encoding="utf-8")).get("used", {})
    problems, pins, changed = [], [], []
    for plugin, info in used.items():
        dist, version = info.get("dist"), info.get("version")
        present = registry.plugins.get(plugin)
        if present is None:
            problems.append(f"plugin '{plugin}' ({dist} {version}) is not installed")
            pins.append(f"'{dist}=={version}'" if dist else None)
        elif present.state == "blocked":
            problems.append(f"{present.label} is installed but blocked ({present.reason}): remove '{plugin}' from "
                            "BIOM3D_DISABLE_PLUGINS, or add it to BIOM3D_PLUGINS")
        elif present.state != "loaded":
            problems.append(f"{present.label} (the run used {version}) {state_phrase(present)}: {present.reason}")
            pins.append(f"'{dist}=={version}'" if dist else None)
        elif version and present.version and present.version != version:
            changed.append(f"{plugin} ({present.dist}): the run used {version}, {present.version} is installed")
    if problems:
        fix = " ".join(p for p in pins if p)
        raise PluginError(f"run {run_dir} needs plugins that are not available: " + "; ".join(problems)
                          + (f". Fix: pip install {fix}" if fix else ""))
    if changed and strict_versions:
        raise PluginError(f"run {run_dir} was made with other plugin versions (--strict-versions): "
                          + "; ".join(changed) + ". Install the recorded versions or drop --strict-versions")
    for line in changed:
        log.warning("run %s: %s; results may differ (--strict-versions refuses this)", run_dir, line)


#: what `--checkpoint` names -> the files that hold it, in the order tried (last-prev.pt is the last.pt before
#: the newest, which a kill mid-write or a damaged last.pt leaves as the last one)
CHECKPOINT_FILES = {"best": ("best.pt",), "last": ("last.pt", "last-prev.pt")}
DEFAULT_CHECKPOINT_FILES = ("best.pt", "last.pt", "last-prev.pt")  # best when the run has one, else the newest


def checkpoint_files(run_dir: Path, choice: str | None = None) -> list[Path]:
    """The checkpoints of ``run_dir`` that ``choice`` ("best", "last"; None: best, else the newest) may load,
    those present, in the order to try them; an error naming the run, the file and what exists if none is."""
    if choice is not None and choice not in CHECKPOINT_FILES:
        raise InputError(f"checkpoint {choice!r}: choose one of {', '.join(CHECKPOINT_FILES)}")
    folder = Path(run_dir) / "checkpoints"
    present = sorted(p.name for p in folder.glob("*.pt")) if folder.is_dir() else []
    if not present:
        raise RunError(f"{run_dir} holds no checkpoint: its training failed or was stopped before the first epoch "
                       f"ended, so it cannot predict; resume it with `biom3d train --resume {run_dir}` or remove it")
    names = DEFAULT_CHECKPOINT_FILES if choice is None else CHECKPOINT_FILES[choice]
    found = [folder / n for n in names if (folder / n).is_file()]
    if not found:
        others = [c for c, files in CHECKPOINT_FILES.items() if c != choice and any(f in present for f in files)]
        why = (f"; best.pt is written when the validation score improves and when training ends (`biom3d train "
               f"--resume {run_dir}` finishes it)") if choice == "best" else ""
        hint = f"; or use --checkpoint {others[0]}" if others else ""
        raise RunError(f"run {run_dir} has no {choice} checkpoint: {folder / names[0]} does not exist (its "
                       f"checkpoints/ holds {', '.join(present)}){why}{hint}")
    return found


def require_checkpoint(run_dir: Path, choice: str | None = None) -> Path:
    """The checkpoint file ``choice`` selects (see :func:`checkpoint_files`): the one to predict with."""
    return checkpoint_files(run_dir, choice)[0]


def trained_run(path: str | Path) -> Path:
    """``path``, or the ``run/`` of the `biom3d run` pipeline folder it names: what export loads. A pipeline
    that cross-validated holds one run per fold: the error names them, so that one can be chosen."""
    path = Path(path)
    found = pipeline_runs(path)
    if found is None:
        return path
    if len(found) > 1:
        raise InputError(f"{path} is a cross-validated `biom3d run` pipeline folder with {len(found)} runs, one per "
                         f"fold ({', '.join(str(r) for r in found)}): give one of them")
    return found[0]


def fold_run(pipeline: Path, fold: int) -> Path:
    """Where a cross-validating `biom3d run` trains the run that validates on ``fold``."""
    return Path(pipeline) / PIPELINE_FOLDS / f"fold-{fold}"


def fold_runs(pipeline: Path) -> list[Path]:
    """The fold runs a cross-validating `biom3d run` trained in ``pipeline`` (so far), in fold order."""
    found = [p for p in (Path(pipeline) / PIPELINE_FOLDS).glob("fold-*") if (p / PLUGINS).is_file()]
    return sorted(found, key=lambda p: (len(p.name), p.name))  # fold-2 before fold-10


def pipeline_runs(path: str | Path) -> list[Path] | None:
    """The trained runs of the `biom3d run` pipeline folder ``path``: its ``run/``, or under cross-validation
    its fold runs (``folds/fold-K/``, which `biom3d predict` ensembles); None when ``path`` is no pipeline
    folder. Where both exist, the last training's record in pipeline.json says which."""
    path = Path(path)
    if (path / PLUGINS).is_file():
        return None  # a run folder
    single = path / PIPELINE_RUN
    folds = fold_runs(path)
    record = _pipeline_record(path).get("train", {})
    if folds and ("runs" in record or not (single / PLUGINS).is_file()):
        return folds
    if (single / PLUGINS).is_file():
        log.info("%s is a `biom3d run` pipeline folder: using its trained run, %s", path, single)
        return [single]
    return None


def _pipeline_record(path: Path) -> dict[str, Any]:
    return read_record(path / PIPELINE)


def read_record(path: Path) -> dict[str, Any]:
    """A JSON record biom3d wrote (pipeline.json, preprocess.json, fingerprint.json), or {} when it is missing,
    unreadable or not an object: callers treat that as "no record"."""
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def load_run_config(run_dir: Path, *, registry=None, overrides: dict[str, Any] | None = None,
                    strict_versions: bool = False) -> Config:
    from biom3d.core.config import load_config

    run_dir = Path(run_dir)
    if not (run_dir / CONFIG).is_file():
        raise RunError(f"{run_dir} is not a biom3d run folder (no {CONFIG}); give the folder `biom3d train` created")
    if registry is not None:
        check_plugins(run_dir, registry, strict_versions=strict_versions)
    return load_config(run_dir / CONFIG, registry=registry, overrides=overrides)

"""Run folders: create them, record what produced them, and check they can be used again.

A run folder holds all that is needed to reproduce and to predict: the resolved config (qualified ids, every
default, absolute data paths), plugins.json, the data fingerprint and folds, checkpoints, logs and pictures.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import yaml

from biom3d.core.atomic import atomic_write_text
from biom3d.core.config import SLOTS, Config
from biom3d.core.errors import PluginError, RunError

CONFIG, PLUGINS, FINGERPRINT, FOLDS = "config.yaml", "plugins.json", "fingerprint.json", "folds.csv"


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
        shutil.copyfile(data_dir / FINGERPRINT, run_dir / FINGERPRINT)
    if folds is not None and folds.is_file():
        shutil.copyfile(folds, run_dir / FOLDS)


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


def check_plugins(run_dir: Path, registry) -> None:
    """Fail up front, with the pip command that fixes it, when a plugin this run used is missing."""
    path = Path(run_dir) / PLUGINS
    if not path.is_file():
        return
    used = json.loads(path.read_text()).get("used", {})
    missing = []
    for plugin, info in used.items():
        present = registry.plugins.get(plugin)
        if present is None or present.state != "loaded":
            dist, version = info.get("dist"), info.get("version")
            why = "is not installed" if present is None else f"is {present.state}: {present.reason}"
            missing.append((plugin, dist, version, why))
    if missing:
        lines = [f"plugin '{p}' ({d} {v}) {why}" for p, d, v, why in missing]
        cmd = "pip install " + " ".join(f"'{d}=={v}'" for _, d, v, _ in missing if d)
        raise PluginError(f"run {run_dir} needs plugins that are not available: " + "; ".join(lines)
                          + f". Fix: {cmd}")


def load_run_config(run_dir: Path, *, registry=None, overrides: dict[str, Any] | None = None) -> Config:
    from biom3d.core.config import load_config

    run_dir = Path(run_dir)
    if not (run_dir / CONFIG).is_file():
        raise RunError(f"{run_dir} is not a biom3d run folder (no {CONFIG}); give the folder `biom3d train` created")
    if registry is not None:
        check_plugins(run_dir, registry)
    return load_config(run_dir / CONFIG, registry=registry, overrides=overrides)

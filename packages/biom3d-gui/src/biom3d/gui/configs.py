"""The Train tab's config: the form as a `biom3d run` config, or the expert's YAML, validated by biom3d's own
:func:`biom3d.core.config.validate` (so the page shows what `biom3d config validate` says, path by path), then
held to the server's rules: data inside the shared folders, runs in the server's runs folder, a new name.

No config field can name code: components are chosen by registry name (a qualified id, short name or alias),
and YAML is read with ``safe_load`` under biom3d's size, depth and alias limits.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field

from biom3d.core.errors import Biom3dError, ConfigError, Problem
from biom3d.gui.runs import OWN_FOLDERS
from biom3d.gui.security import Roots

#: the form's field -> the config key it sets (the page shows a problem of that key next to that field)
FIELDS = {
    "name": "name", "stack": "stack", "num_classes": "num_classes", "epochs": "train.epochs",
    "iters_per_epoch": "train.iters_per_epoch", "val_iters": "train.val_iters", "batch_size": "train.batch_size",
    "lr": "train.lr", "device": "train.device", "workers": "train.workers", "patch_size": "patch_size",
    "num_pools": "num_pools", "aug_patch_size": "aug_patch_size", "max_dim": "autoconfig.max_dim",
    "images": "data.images", "masks": "data.masks", "test_images": "data.test_images", "test_masks": "data.test_masks",
}
DATA_KEYS = ("images", "masks", "test_images", "test_masks", "preprocessed", "folds", "fingerprint", "predictions")


class TrainForm(BaseModel):
    """What the Train tab sends. Values are checked by the config model, not here, so the messages are the
    CLI's; None means "the auto-configuration's" (or the config default)."""

    model_config = ConfigDict(extra="forbid")

    name: str = ""
    images: str = ""
    masks: str = ""
    num_classes: Any = 1
    test_images: str | None = None
    test_masks: str | None = None
    stack: str | None = None
    small: bool = Field(False, description="The stack's CPU-sized components (a narrower network).")
    cross_validation: bool = Field(False, description="`biom3d run --cross-validation`: one run per fold.")
    epochs: Any = None
    iters_per_epoch: Any = None
    val_iters: Any = None
    batch_size: Any = None
    lr: Any = None
    device: str | None = None
    workers: Any = None
    patch_size: list[Any] | None = None
    num_pools: list[Any] | None = None
    aug_patch_size: list[Any] | None = None
    max_dim: Any = None


def form_config(form: TrainForm, *, runs_dir: Path, registry=None) -> dict[str, Any]:
    """The raw config the form describes (YAML-able), for `biom3d run`."""
    raw: dict[str, Any] = {"name": form.name.strip(), "runs_dir": str(runs_dir), "num_classes": form.num_classes}
    if form.stack:
        raw["stack"] = form.stack
    data = {"images": form.images, "masks": form.masks, "test_images": form.test_images or None,
            "test_masks": form.test_masks or None}
    raw["data"] = {k: v for k, v in data.items() if v}
    train = {k: getattr(form, k) for k in ("epochs", "iters_per_epoch", "val_iters", "batch_size", "lr", "device",
                                           "workers")}
    raw["train"] = {k: v for k, v in train.items() if v not in (None, "")}
    for key in ("patch_size", "num_pools", "aug_patch_size"):
        value = getattr(form, key)
        if value:
            raw[key] = value
    if form.max_dim not in (None, ""):
        raw["autoconfig"] = {"max_dim": form.max_dim}
    if form.small:
        raw.update(small_envelopes(form.stack, registry))
    if form.cross_validation:
        raw["cross_validation"] = True
    return raw


def small_envelopes(stack: str | None, registry=None) -> dict[str, Any]:
    """The stack's CPU-sized envelopes (what `biom3d demo` trains with); nothing when it has none."""
    from biom3d.core.discovery import get_registry
    from biom3d.core.stacks import choose_stack

    try:
        chosen = choose_stack(registry or get_registry(), stack)
    except Biom3dError:
        return {}  # an unknown stack: validation says so, with its path
    return {slot: env for slot, env in (chosen.spec.small.items() if chosen else ())}  # type: ignore[attr-defined]


def parse_yaml(text: str) -> dict[str, Any]:
    """The YAML of the expert editor as a mapping, read like a config file (limits, ``safe_load``)."""
    from biom3d.core.config import MAX_YAML_BYTES, check_yaml_limits

    if len(text.encode("utf-8")) > MAX_YAML_BYTES:
        raise ConfigError(f"the text is over {MAX_YAML_BYTES} bytes; a config is at most that")
    check_yaml_limits(text)
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"not valid YAML: {exc}") from exc
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"the top level must be a mapping, got {type(raw).__name__}")
    return raw


def to_yaml(raw: dict[str, Any]) -> str:
    return yaml.safe_dump(raw, sort_keys=False, default_flow_style=None)


def check(raw: dict[str, Any], *, roots: Roots, runs_dir: Path, registry=None, new_run: bool = True) -> list[Problem]:
    """Every problem of ``raw``: biom3d's validation (both phases), then the server's rules."""
    from biom3d.core.config import validate

    problems: list[Problem] = []
    try:
        validate(raw, registry=registry)
    except ConfigError as exc:
        problems += exc.problems
    data = raw.get("data") if isinstance(raw.get("data"), dict) else {}
    for key in DATA_KEYS:
        value = data.get(key)
        if isinstance(value, str) and value:
            try:
                roots.check(value, what=f"data.{key}", must_exist=key in ("images", "masks", "test_images",
                                                                          "test_masks"))
            except Biom3dError as exc:
                problems.append(Problem(f"data.{key}", str(exc)))
    for key in ("images", "masks"):
        if not data.get(key):
            problems.append(Problem(f"data.{key}", "choose a folder"))
    if raw.get("runs_dir") not in (None, str(runs_dir)):
        problems.append(Problem("runs_dir", f"runs go to this server's runs folder, {runs_dir}; remove the key"))
    name = raw.get("name")
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name or ""):
        if not any(p.path == "name" for p in problems):
            problems.append(Problem("name", "give the run a name: letters, digits, '_', '.', '-'"))
    elif name in OWN_FOLDERS:
        problems.append(Problem("name", f"{name!r} is the name of a folder this server keeps beside the runs; choose "
                                "another name"))
    elif new_run and (Path(runs_dir) / name).exists():
        problems.append(Problem("name", f"a run named {name!r} exists already; resume it from the Runs tab, or "
                                "choose another name"))
    return problems


def prepare(raw: dict[str, Any], *, roots: Roots, runs_dir: Path) -> dict[str, Any]:
    """The config a job runs (once :func:`check` found nothing): the server's runs folder, data paths
    absolute and resolved (the job reads the config from the server's own folder)."""
    raw = dict(raw)
    raw["runs_dir"] = str(runs_dir)
    data = dict(raw.get("data") or {})
    for key, value in data.items():
        if isinstance(value, str) and value:
            data[key] = str(roots.check(value, must_exist=False, what=f"data.{key}"))
    raw["data"] = data
    return raw


def problems_json(problems: list[Problem]) -> list[dict[str, str]]:
    """Problems for the page, each with the form field it belongs to (when there is one)."""
    by_key = {v: k for k, v in FIELDS.items()}
    out = []
    for p in problems:
        key = re.sub(r"\[\d+\]$", "", p.path)
        out.append({"path": p.path, "message": p.message, "field": by_key.get(key, "")})
    return out

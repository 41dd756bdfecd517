"""Checkpoints: written atomically with the previous one kept, loaded with ``weights_only=True``.

``last.pt`` is replaced each time; the one it replaces becomes ``last-prev.pt``. A run killed mid-write thus
always leaves a complete checkpoint, and a corrupted ``last.pt`` (disk full, bad copy) falls back to the
previous one with a warning.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch

from biom3d.core.atomic import atomic_path
from biom3d.core.errors import RunError

log = logging.getLogger("biom3d")
LAST, PREVIOUS, BEST = "last.pt", "last-prev.pt", "best.pt"


def save_checkpoint(path: Path, state: dict[str, Any], *, keep_previous: bool = False) -> None:
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
        if keep_previous and path.exists():
            os.replace(path, path.with_name(PREVIOUS))


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise RunError(f"checkpoint {path} cannot be read ({type(exc).__name__}: {exc})") from exc
    if not isinstance(state, dict) or "model" not in state:
        raise RunError(f"checkpoint {path} holds no model weights")
    return state


def load_latest(folder: Path, map_location: str | torch.device = "cpu") -> tuple[dict[str, Any], Path]:
    """The newest readable checkpoint among last, last-prev and best, warning about each unreadable one."""
    folder = Path(folder)
    errors = []
    for name in (LAST, PREVIOUS, BEST):
        path = folder / name
        if not path.exists():
            continue
        try:
            state = load_checkpoint(path, map_location)
        except RunError as exc:
            errors.append(str(exc))
            log.warning("%s; trying the previous checkpoint", exc)
            continue
        if errors:
            log.warning("resuming from %s (epoch %s) instead", path, state.get("epoch"))
        return state, path
    detail = ("; ".join(errors)) if errors else "no checkpoint was written yet"
    raise RunError(f"no usable checkpoint in {folder}: {detail}")


def load_weights(run_dir: Path, *, prefer: str = BEST, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Model weights of a finished or running run (best by default, else the newest readable)."""
    folder = Path(run_dir) / "checkpoints"
    preferred = folder / prefer
    if preferred.exists():
        try:
            return load_checkpoint(preferred, map_location)
        except RunError as exc:
            log.warning("%s; using the newest readable checkpoint", exc)
    return load_latest(folder, map_location)[0]

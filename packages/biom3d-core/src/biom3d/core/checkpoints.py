"""Checkpoints: written atomically with the previous one kept, loaded with ``weights_only=True``.

``last.pt`` is replaced each time; the one it replaces becomes ``last-prev.pt``. A run killed mid-write thus
always leaves a complete checkpoint, and a corrupted ``last.pt`` (disk full, bad copy) falls back to the
previous one with a warning. A file that is not a biom3d checkpoint, or that would run code when unpickled,
is refused in one paragraph; the safe loader is never turned off.
"""

from __future__ import annotations

import errno
import logging
import os
import pickle
import re
from pathlib import Path
from typing import Any

import torch

from biom3d.core.atomic import atomic_path, disk_full
from biom3d.core.errors import RunError

log = logging.getLogger("biom3d")
LAST, PREVIOUS, BEST = "last.pt", "last-prev.pt", "best.pt"


def save_checkpoint(path: Path, state: dict[str, Any], *, keep_previous: bool = False) -> None:
    path = Path(path)
    size = _tensor_bytes(state)
    with atomic_path(path, size=size) as tmp:
        with open(tmp, "wb") as f:
            try:
                torch.save(state, f)
            except RuntimeError as exc:  # how torch's stream writer reports a failed write
                if disk_full(path.parent, size):
                    raise OSError(errno.ENOSPC, f"no space left ({exc})") from exc
                raise
        if keep_previous and path.exists():
            os.replace(path, path.with_name(PREVIOUS))


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise RunError(_refused(path, exc)) from exc
    except OSError as exc:
        raise RunError(f"checkpoint {path} cannot be read: {exc.strerror or exc}") from exc
    except Exception as exc:
        raise RunError(f"checkpoint {path} cannot be read: it is damaged or not a PyTorch file "
                       f"({_first_sentence(exc)}); it may have been cut short by a full disk or an interrupted "
                       "copy: copy it again, or use another checkpoint of the run") from exc
    if not isinstance(state, dict) or "model" not in state:
        raise RunError(f"checkpoint {path} holds no model weights: it is not a biom3d checkpoint; give a run "
                       "folder `biom3d train` wrote")
    return state


def has_checkpoint(folder: Path) -> bool:
    """Whether training got as far as writing a checkpoint (readable or not) in ``folder``."""
    return any((Path(folder) / name).is_file() for name in (LAST, PREVIOUS, BEST))


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


def _tensor_bytes(value: Any) -> int:
    """About what a state takes on disk: the bytes of its tensors."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(_tensor_bytes(v) for v in value.values())
    if isinstance(value, list | tuple):
        return sum(_tensor_bytes(v) for v in value)
    return 0


def _refused(path: Path, exc: pickle.UnpicklingError) -> str:
    """Why the safe loader refused ``path``, without torch's advice to turn the safety off."""
    found = re.search(r"GLOBAL ([\w.]+)", str(exc))
    if found:
        return (f"checkpoint {path} is refused: loading it would import {found[1]}, which a biom3d checkpoint "
                "never does (it holds tensors and plain values only), so it is unsafe or not a biom3d checkpoint; "
                "use a checkpoint written by `biom3d train` from a source you trust")
    return (f"checkpoint {path} is not a biom3d checkpoint: it is not a PyTorch file of tensors and plain values "
            "(the safe loader cannot read it); give a run folder `biom3d train` wrote")


def _first_sentence(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    text = text.split(". ")[0]
    return f"{type(exc).__name__}: {text[:160]}"

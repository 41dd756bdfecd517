"""Device choice and seeding, shared by the builder (training) and the predict stage. torch is imported on
first call only."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

from biom3d.core.errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    import torch


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA, then MPS, then CPU; a CUDA device asked for where there is none is an input error."""
    import torch

    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"train.device is '{name}' but CUDA is not available here; use --device cpu or auto")
    return device


def seed_everything(seed: int | None) -> None:
    """Seed Python, NumPy and torch (None: leave them unseeded)."""
    if seed is None:
        return
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)

"""Device choice, seeding and the CPU allocator, shared by the builder (training), the trainer and the predict
stage. torch is imported on first call only."""

from __future__ import annotations

import contextlib
import ctypes
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
    """Seed Python, NumPy and torch. None: torch from the OS's entropy, Python and NumPy as they are (seeded from it
    at start). Left alone, torch's default generator starts from one fixed seed: every unseeded run would draw the
    same initial weights and augmentations."""
    import torch

    if seed is None:
        torch.seed()
        return
    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def keep_freed_memory() -> None:
    """Make glibc keep large freed blocks for reuse instead of returning them to the kernel (process-wide).

    Why: by default glibc serves every block over 32 MiB (activations, gradients) with ``mmap`` and unmaps it
    when freed, so the kernel zero-fills fresh pages when the next training step asks again: ~35% of a
    96x112x96 CPU step went to those page faults. Without glibc there is nothing to tune.
    """
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-1, 2**31 - 1)  # M_TRIM_THRESHOLD (an int): keep up to 2 GiB free at the top of the heap
        libc.mallopt(-4, 0)  # M_MMAP_MAX: no mmap-ed blocks

"""``train.compile``: the training forward through ``torch.compile`` where this platform can compile it, eager
training with a message where it cannot.

torch.compile is lazy: ``torch.compile(model)`` only refuses a platform it never supports (a Python version
dynamo does not know); a missing C++ compiler, an unsupported backend or an operator inductor cannot lower
shows on the first forward or backward. So the trainer runs its step through :func:`compiled` and, when that
step fails with :func:`is_compile_failure`, says why and repeats the same step eagerly: no run dies because
its platform cannot compile. Only the training forward is compiled: validation runs the network eagerly in
eval mode, where a compiled graph would be recompiled for a handful of batches per epoch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger("biom3d")
#: where torch.compile's own errors come from (dynamo traces, inductor generates and builds the kernels)
COMPILER_MODULES = ("torch._dynamo", "torch._inductor", "torch._functorch", "torch._subclasses")


def compiled(model: Any) -> Callable[..., Any]:
    """``torch.compile(model)`` (its parameters and state_dict stay the model's), or ``model`` itself, with a
    message, when this platform refuses it outright."""
    import torch

    try:
        return torch.compile(model)
    except (RuntimeError, ImportError, AssertionError) as exc:
        log.warning("train.compile: torch.compile is not available here (%s); training without it", _first_line(exc))
        return model


def is_compile_failure(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) was raised by torch.compile's machinery, not by the model."""
    seen: BaseException | None = exc
    while seen is not None:
        if type(seen).__module__.startswith(COMPILER_MODULES):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def fallback_message(exc: BaseException) -> str:
    return (f"train.compile: torch.compile cannot compile this network here ({_first_line(exc)}); training "
            "eagerly from this step on (set train.compile: false to skip the attempt)")


def _first_line(exc: BaseException) -> str:
    """The error's type and opening words; two lines, since compile errors name their cause on the second
    ("backend='inductor' raised:" / "CppCompileError: C++ compile error")."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {' '.join(lines[:2])[:240]}".rstrip(": ")

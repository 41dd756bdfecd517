"""pydantic validation errors as biom3d :class:`~biom3d.core.errors.Problem` records: each with its config path
(``model.params.num_pools[2]``), unknown keys with "did you mean", the offending value quoted, pydantic's own
prefixes dropped. Shared by config validation and ``Component.build`` so Python and the CLI say the same thing.
Light: pydantic is only duck-typed here.
"""

from __future__ import annotations

import difflib
from typing import Any

from biom3d.core.errors import Problem


def problems_from(exc: Any, *, prefix: str = "", model: Any = None) -> list[Problem]:
    """One Problem per error of a pydantic ``ValidationError``."""
    out = []
    for err in exc.errors(include_url=False):
        loc = tuple(err["loc"])
        path = format_path(prefix, loc)
        msg = err["msg"]
        if err["type"] == "extra_forbidden" and model is not None:
            hint = _close_field(model, loc)
            msg = "unknown key" + (f"; did you mean '{hint}'?" if hint else "")
        else:
            msg = msg.removeprefix("Value error, ").removeprefix("Assertion failed, ")  # a validator's own words
            if err["type"] not in ("missing",) and _is_scalar(err.get("input")):
                msg = f"{msg} (got {err['input']!r})"
        out.append(Problem(path, msg))
    return out


def format_path(prefix: str, loc: tuple[Any, ...]) -> str:
    """``('num_pools', 2)`` under ``model.params`` -> ``model.params.num_pools[2]``."""
    path = prefix
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part.startswith("function-") or part in ("tagged-union", "str"):  # pydantic union branches
            continue
        else:
            path = f"{path}.{part}" if path else str(part)
    return path


def _close_field(model: Any, loc: tuple[Any, ...]) -> str | None:
    node: Any = model
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = getattr(node, "model_fields", {}).get(part)
        ann = getattr(field, "annotation", None)
        args = getattr(ann, "__args__", ()) or (ann,)
        node = next((a for a in args if isinstance(a, type) and hasattr(a, "model_fields")), None)
        if node is None:
            return None
    names = list(getattr(node, "model_fields", {}))
    close = difflib.get_close_matches(str(loc[-1]), names, n=1, cutoff=0.6)
    return close[0] if close else None


def _is_scalar(value: Any) -> bool:
    return isinstance(value, str | int | float | bool) and len(repr(value)) < 60

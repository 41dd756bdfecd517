"""The state of one import: the original's keys still to map, the notes so far, and the shared values.

Every section of the conversion reads keys through :meth:`Job.get`, so whatever no section read is reported at
the end instead of being lost silently; module kwargs go through :class:`Kwargs` for the same reason.
"""

from __future__ import annotations

import math
import reprlib
from typing import Any

from biom3d.cli.legacy.mapping import RENAMED

Raw = dict[str, Any]
MAX_LISTED = 20  # dropped kwargs named in one note
_SHORT = reprlib.Repr()  # values in notes and errors: a few items, short strings, three levels
_SHORT.maxlevel, _SHORT.maxstring, _SHORT.maxother, _SHORT.maxlong = 3, 80, 80, 40
_SHORT.maxlist = _SHORT.maxtuple = _SHORT.maxdict = _SHORT.maxset = 8


class Job:
    """One conversion: the original config (keys renamed as the original did), what was read, the notes."""

    def __init__(self, raw: Raw):
        self.raw = {RENAMED.get(k, k): v for k, v in raw.items()}
        self.used: set[str] = set()
        self.notes: list[str] = []
        self.mapped: list[str] = []  # "MODEL UNet3DVGGDeep -> models/unet3d-vgg-deep", the first note
        self.multilabel = False
        self.deep: bool | None = None  # the model's deep supervision; None: the model has no such switch

    def get(self, key: str, default: Any = None) -> Any:
        """The value of ``key`` (None counts as unset, as in the original's defaults), marked as read."""
        self.used.add(key)
        value = self.raw.get(key, default)
        return default if value is None else value

    def module(self, key: str, known: tuple[str, ...], *, notes: list[str] | None = None) -> tuple[str | None, Kwargs]:
        """(name, kwargs) of the ``{fct, kwargs}`` module under ``key``; (None, empty) when absent."""
        env = self.get(key)
        if env is None:
            return None, Kwargs(key, {}, self.notes if notes is None else notes)
        return self.envelope(key, env, known, notes=notes)

    def envelope(self, where: str, env: Any, known: tuple[str, ...], *,
                 notes: list[str] | None = None) -> tuple[str, Kwargs]:
        """(name, kwargs) of one ``{fct, kwargs}`` module; a name the original's register lacked is an error."""
        if not isinstance(env, dict) or "fct" not in env:
            raise ValueError(f"{where}: expected a module written {{fct: Name, kwargs: {{...}}}}, got {shown(env)}")
        name = env["fct"]
        if not isinstance(name, str) or name not in known:
            raise ValueError(f"{where}: unknown original module {shown(name)}; the original biom3d knew: "
                             f"{', '.join(known)}")
        return name, Kwargs(f"{where}.kwargs", env.get("kwargs"), self.notes if notes is None else notes)

    def check_shared(self, out: Raw, field: str, value: Any, where: str, params: Raw | None = None) -> None:
        """A repeated shared value: fills the shared field if unset, else kept in ``params`` when it differs."""
        value = ints(value, where) if isinstance(value, list | tuple) else value
        if value is not None and not isinstance(value, list):
            value = integer(value, where)  # a shared count (in_channels) or a size written as one number
        if value is None:
            return
        if out.get(field) is None:
            out[field] = value
        elif value != out[field]:
            if params is None:
                self.notes.append(f"{where}={value} differs from the shared {field}={out[field]}; the shared value is used")
            else:
                params[field] = value
                self.notes.append(f"{where}={value} differs from the shared {field}={out[field]}; kept in model.params.{field}")


class Kwargs:
    """A module's kwargs, taken one by one; whatever nobody took is reported, never passed on."""

    def __init__(self, where: str, values: Any, notes: list[str]):
        if values is None:
            values = {}
        if not isinstance(values, dict):
            raise ValueError(f"{where}: expected a mapping of keyword arguments, got {shown(values)}")
        self.where, self.values, self.notes = where, dict(values), notes

    def pop(self, name: str, default: Any = None) -> Any:
        return self.values.pop(name, default)

    def drop_rest(self, target: str) -> None:
        """Report the kwargs no section took: they have no equivalent in ``target``."""
        self.values.pop("name", None)  # a logging label
        if self.values:
            listed = ", ".join(f"{k}={shown(v)}" for k, v in list(self.values.items())[:MAX_LISTED])
            more = f" and {len(self.values) - MAX_LISTED} more" if len(self.values) > MAX_LISTED else ""
            self.notes.append(f"{self.where}: {listed}{more}: no equivalent in {target}, dropped")
            self.values.clear()


def first(*values: Any) -> Any:
    """The first value that is set (None and empty lists mean unset, as in the original's defaults)."""
    return next((v for v in values if v is not None and v != []), None)


def ints(value: Any, where: str | None = None) -> list[int] | None:
    """A size or pooling triple as ints. Anything else: a ValueError naming ``where`` (the original's key), or
    without ``where`` the value as is, for validation to report."""
    if value is None or value == []:
        return None
    if not isinstance(value, list | tuple):
        if where is not None:
            raise ValueError(f"{where}: expected a list of integers, got {shown(value)}")
        return value
    if where is not None:
        return [integer(v, f"{where}[{i}]") for i, v in enumerate(value)]
    try:
        return [int(v) for v in value]
    except (TypeError, ValueError, OverflowError):
        return list(value)


def integer(value: Any, where: str) -> int:
    """``value`` (an int, an integral float or such a string) as an int, else a ValueError naming ``where``."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float | str):
        try:
            as_float = float(value)
            if as_float == int(as_float):
                return int(as_float)
        except (ValueError, OverflowError):
            pass
    raise ValueError(f"{where}: expected an integer, got {shown(value)}")


def number(value: Any, where: str) -> float:
    """``value`` (a finite int, float or numeric string) as a float, else a ValueError naming ``where``."""
    if isinstance(value, int | float | str) and not isinstance(value, bool):
        try:
            as_float = float(value)
        except (ValueError, OverflowError):
            as_float = math.nan
        if math.isfinite(as_float):
            return as_float
    raise ValueError(f"{where}: expected a number, got {shown(value)}")


def shown(value: Any) -> str:
    """A bounded repr for notes and errors: a huge value (an alias bomb, a pasted array) prints in a line."""
    return _SHORT.repr(value)

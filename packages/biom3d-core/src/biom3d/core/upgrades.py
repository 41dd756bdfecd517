"""Config schema versions. Older configs are upgraded one step at a time; newer ones are refused.

History:
  1 -> envelopes written ``{fct: Name, kwargs: {...}}``, as the original biom3d wrote its modules.
  2 -> envelopes ``{name, params}`` (current).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from biom3d.core._version import __version__ as CORE_VERSION
from biom3d.core.errors import ConfigError, Problem

CURRENT_SCHEMA_VERSION = 2
ENVELOPE_SLOTS = ("preprocessor", "dataset", "model", "loss", "trainer", "predictor", "reader", "writer")
ENVELOPE_LISTS = ("metrics", "postprocessors", "callbacks")


def _v1_to_v2(raw: dict[str, Any]) -> dict[str, Any]:
    def convert(env: Any) -> Any:
        if isinstance(env, dict) and ("fct" in env or "kwargs" in env):
            env = dict(env)
            env["name"] = env.pop("fct", env.get("name"))
            env["params"] = env.pop("kwargs", None) or {}
        return env

    for key in ENVELOPE_SLOTS:
        if key in raw:
            raw[key] = convert(raw[key])
    for key in ENVELOPE_LISTS:
        if isinstance(raw.get(key), list):
            raw[key] = [convert(e) for e in raw[key]]
    return raw


#: version N -> function that turns a version-N config into version N+1
UPGRADES: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {1: _v1_to_v2}


def upgrade(raw: dict[str, Any], *, source: str | None = None) -> dict[str, Any]:
    """Return a copy of ``raw`` at the current schema version (a missing version means current)."""
    raw = copy.deepcopy(raw)
    version = raw.get("schema_version", CURRENT_SCHEMA_VERSION)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ConfigError([Problem("schema_version", f"must be a positive integer, got {version!r}")], source=source)
    if version > CURRENT_SCHEMA_VERSION:
        raise ConfigError(
            [
                Problem(
                    "schema_version",
                    f"this config uses schema_version {version}, newer than the {CURRENT_SCHEMA_VERSION} that "
                    f"biom3d-core {CORE_VERSION} reads; upgrade with `pip install -U biom3d-core`",
                )
            ],
            source=source,
        )
    while version < CURRENT_SCHEMA_VERSION:
        raw = UPGRADES[version](raw)
        version += 1
        raw["schema_version"] = version
    return raw

"""biom3d-core: hooks, specs, plugin registry and validated configs.

Importing this package costs only pluggy: heavier names load on first access.
"""

from __future__ import annotations

from typing import Any

from biom3d.core._version import __version__
from biom3d.core.hookspecs import hookimpl, hookspec

_LAZY = {
    "Builder": "biom3d.core.builder",
    "Config": "biom3d.core.config",
    "load_config": "biom3d.core.config",
    "validate": "biom3d.core.config",
    "RunContext": "biom3d.core.context",
    "Registry": "biom3d.core.registry",
    "get_registry": "biom3d.core.discovery",
    "discover": "biom3d.core.discovery",
    "config_schema": "biom3d.core.schema",
}

__all__ = ["__version__", "hookimpl", "hookspec", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'biom3d.core' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)

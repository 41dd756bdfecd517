"""The Builder: turns a resolved config into live components, handing each factory the run context."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from biom3d.core.config import SLOTS, Config, Envelope, load_config, validate
from biom3d.core.context import RunContext
from biom3d.core.registry import Component, Registry, get_registry


class Builder:
    """Entry point of the Python API: ``Builder("config.yaml").build("model")``."""

    def __init__(self, config: Config | str | Path | dict[str, Any], *, registry: Registry | None = None, **context: Any):
        self.registry = registry or get_registry()
        if isinstance(config, str | Path):
            config = load_config(config, registry=self.registry)
        elif isinstance(config, dict):
            config = validate(config, registry=self.registry)
        self.config: Config = config
        self.context: RunContext = RunContext.from_config(config, **context)

    def component(self, slot: str, index: int = 0) -> tuple[Component, Envelope]:
        """The component a config slot selects (``metrics``, ``callbacks``... take an index)."""
        kind, _ = SLOTS[slot]
        env = getattr(self.config, slot)
        if isinstance(env, list):
            env = env[index]
        if env is None:
            raise KeyError(f"the config selects no {slot}")
        return self.registry.resolve(kind, env.name), env

    def build(self, slot: str, index: int | None = None, **context: Any) -> Any:
        """Build what a slot selects; a list slot without ``index`` builds every entry."""
        ctx = self.context.replace(**context) if context else self.context
        env = getattr(self.config, slot)
        if isinstance(env, list) and index is None:
            return [self.build(slot, i, **context) for i in range(len(env))]
        comp, env = self.component(slot, index or 0)
        return comp.build(env.params, ctx)

    def build_component(self, kind: str, name: str, params: dict[str, Any] | None = None, **context: Any) -> Any:
        """Build any registered component by kind and name, outside the config's choices."""
        ctx = self.context.replace(**context) if context else self.context
        return self.registry.resolve(kind, name).build(params or {}, ctx)

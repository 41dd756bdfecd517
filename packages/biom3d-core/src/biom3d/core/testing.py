"""pytest plugin for plugin authors (auto-loaded through the ``pytest11`` entry point).

The ``biom3d_plugins`` fixture gives each test an isolated registry: core builtins plus the plugins the test
registers, no installed entry points, and it becomes the process-wide registry for the test's duration::

    def test_my_model(biom3d_plugins):
        biom3d_plugins.register(my_plugin_module, name="acme")
        model = biom3d_plugins.registry.resolve("model", "acme/tiny").build({}, RunContext(num_classes=1))
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import pytest

from biom3d.core.discovery import discover, set_registry
from biom3d.core.registry import Registry


class PluginSandbox:
    """An isolated plugin manager: register plugins in-process and get a fresh registry."""

    def __init__(self, *, installed: bool = False, environ: Mapping[str, str] | None = None):
        self._extra: list[tuple[str, object]] = []
        self._installed = installed
        self._environ = dict(environ or {})
        self.registry: Registry = self._discover()

    def register(self, plugin: object, name: str | None = None) -> Registry:
        """Add a plugin (a module or an object with hookimpls) and rebuild the registry."""
        name = name or getattr(plugin, "__name__", type(plugin).__name__).rsplit(".", 1)[-1]
        self._extra.append((name, plugin))
        self.registry = self._discover()
        set_registry(self.registry)
        return self.registry

    def _discover(self) -> Registry:
        return discover(environ=self._environ, entry_points=None if self._installed else [], extra=self._extra)


@pytest.fixture
def biom3d_plugins() -> Iterator[PluginSandbox]:
    """An isolated registry with core builtins only; ``.register(module, name)`` adds plugins."""
    sandbox = PluginSandbox()
    previous = set_registry(sandbox.registry)
    try:
        yield sandbox
    finally:
        set_registry(previous)

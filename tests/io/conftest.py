"""Fixtures for biom3d-io: a registry holding the io plugin, and small read/write helpers through it."""

from __future__ import annotations

from pathlib import Path

import pytest

import biom3d.io.plugin as io_plugin


class IO:
    """Read and write through the registry, the way the core's stages do (reader/writer picked by suffix)."""

    def __init__(self, registry):
        self.registry = registry

    def read(self, path: Path, **params):
        return self.registry.reader_for(path).build(params)(Path(path))

    def write(self, path: Path, array, ref=None, **params) -> None:
        self.registry.writer_for(path).build(params)(Path(path), array, ref)


@pytest.fixture
def io(biom3d_plugins) -> IO:
    return IO(biom3d_plugins.register(io_plugin, name="io"))

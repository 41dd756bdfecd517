"""Fixtures of the biom3d-monai tests."""

from __future__ import annotations

import pytest

import biom3d.monai.plugin as monai_plugin


@pytest.fixture
def registry(biom3d_plugins):
    """Core builtins and the monai plugin: its own stack fills every slot of a config."""
    return biom3d_plugins.register(monai_plugin, name="monai")

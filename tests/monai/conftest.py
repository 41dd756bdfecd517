"""Fixtures of the biom3d-monai tests."""

from __future__ import annotations

import pytest

import biom3d.monai.plugin as monai_plugin
from tests.core import defaults_plugin


@pytest.fixture
def registry(biom3d_plugins):
    """Core builtins, stand-ins for the default config's other slots, and the monai plugin."""
    biom3d_plugins.register(defaults_plugin, name="base")
    return biom3d_plugins.register(monai_plugin, name="monai")

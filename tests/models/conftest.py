"""Fixtures for the models plugin: an isolated registry holding core builtins and this plugin."""

import pytest
import torch

import biom3d.models.plugin as models_plugin


@pytest.fixture
def registry(biom3d_plugins):
    return biom3d_plugins.register(models_plugin, name="models")


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)

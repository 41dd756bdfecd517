"""Tests of the plugin, with biom3d-core's pytest fixture (needs pytest; the fixture loads by itself)."""

import numpy as np
import pytest
import torch

from biom3d.core.context import RunContext
from biom3d.core.errors import ConfigError


@pytest.fixture
def registry(biom3d_plugins):
    import biom3d_tinyseg.plugin

    return biom3d_plugins.register(biom3d_tinyseg.plugin, name="tinyseg")  # core's builtins + this plugin only


def test_model_and_loss_train_one_step(registry):
    ctx = RunContext(num_classes=2, patch_size=(8, 16, 16))
    net = registry.resolve("model", "tinyseg/tiny-convnet").build({"features": 4}, ctx)
    loss = registry.resolve("metric", "tinyseg/soft-dice-ce").build({}, ctx)
    logits = net(torch.randn(2, 1, 8, 16, 16))
    assert logits.shape == (2, ctx.out_channels, 8, 16, 16)
    loss(logits, torch.randint(0, 3, (2, 8, 16, 16))).backward()


def test_levels_must_fit_the_run_patch(registry):
    with pytest.raises(ConfigError, match="levels"):
        registry.resolve("model", "tinyseg/tiny-convnet").build({"levels": 2}, RunContext(patch_size=(6, 16, 16)))


def test_tiny_files_round_trip(registry, tmp_path):
    reader = registry.reader_for(tmp_path / "a.tiny")  # chosen by suffix
    assert reader.qid == "tinyseg/tiny"
    write = registry.writer_for(tmp_path / "a.tiny").build({}, None)
    mask = np.zeros((4, 8, 8), np.uint8)
    mask[1:3, 2:6, 2:6] = 1
    write(tmp_path / "a.tiny", mask, None)
    back = reader.build({}, None)(tmp_path / "a.tiny")
    assert back.array.dtype == np.uint8 and (back.array == mask).all() and back.meta["axes"] == "ZYX"
    assert [p.name for p in tmp_path.iterdir()] == ["a.tiny"]  # no temporary left behind


def test_min_volume_clears_small_classes(registry):
    post = registry.resolve("postprocessor", "tinyseg/min-volume").build({"min_voxels": 5}, RunContext(num_classes=2))
    mask = np.zeros((4, 4, 4), np.uint8)
    mask[0, 0, :2] = 1  # 2 voxels: cleared
    mask[2:, 2:, 2:] = 2  # 8 voxels: kept
    assert set(np.unique(post(mask))) == {0, 2}

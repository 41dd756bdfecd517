"""The README's example config is one a run takes: it validates, and its model and loss fit each other (a model
with deep-supervision heads needs the deep-supervision loss; training refuses the pair otherwise, which
validation alone cannot see)."""

from __future__ import annotations

from pathlib import Path

import torch
import yaml

from biom3d.core.builder import Builder, _check_deep_supervision
from tests.fenced import fenced_blocks

README = Path(__file__).resolve().parents[2] / "README.md"


def test_the_readme_config_trains_one_step():
    (raw,) = [yaml.safe_load(body) for _, lang, body in fenced_blocks(README) if lang == "yaml"]
    builder = Builder(raw)
    model, loss = builder.build("model"), builder.build("loss")
    _check_deep_supervision(builder.config, model, loss)
    model.train()
    image = torch.randn(1, 1, 32, 64, 64)  # a third of the patch: the network's poolings divide it
    target = (torch.rand(1, 1, 32, 64, 64) > 0.5).float()
    value = loss(model(image), target)
    assert value.ndim == 0 and torch.isfinite(value)
    value.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)

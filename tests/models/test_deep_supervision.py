"""The deep-supervision wrapper: weights, target resizing, config-time validation of its inner loss."""

import pytest
import torch

from biom3d.core.config import validate
from biom3d.core.context import RunContext
from biom3d.core.errors import ConfigError
from biom3d.models.deep_supervision import DeepSupervisionLoss


class Recorder(torch.nn.Module):
    """An inner loss that keeps the targets it receives and returns a constant per call."""

    def __init__(self, values):
        super().__init__()
        self.targets, self.values = [], list(values)

    def forward(self, logits, target):
        self.targets.append(target)
        return logits.sum() * 0 + self.values[len(self.targets) - 1]


def _build(registry, params=None, **ctx):
    return registry.resolve("metric", "deep-supervision").build(params or {}, RunContext(**ctx))


def test_weights_halve_per_stage_drop_the_lowest_and_sum_to_one(registry):
    loss = _build(registry)
    assert loss.deep_supervision is True
    assert loss.weights(5) == pytest.approx([1 / 1.875, 0.5 / 1.875, 0.25 / 1.875, 0.125 / 1.875, 0.0])
    assert loss.weights(1) == [1.0]  # the full-resolution head always counts
    assert _build(registry, {"skip_lowest": 0}).weights(3) == pytest.approx([4 / 7, 2 / 7, 1 / 7])
    assert _build(registry, {"skip_lowest": 8}).weights(3) == [1.0, 0.0, 0.0]
    assert _build(registry, {"weight_factor": 1.0, "skip_lowest": 0}).weights(4) == pytest.approx([0.25] * 4)


def test_plain_losses_do_not_claim_deep_supervision(registry):
    for name in ("dice-ce", "dice", "ce", "bce", "dice-bce", "mse"):
        assert registry.resolve("metric", name).build({}, RunContext()).deep_supervision is False


def test_loss_is_the_weighted_sum_over_heads_with_targets_resized_by_nearest(registry):
    inner = Recorder([1.0, 2.0, 4.0])
    loss = DeepSupervisionLoss(inner, 0.5, 0)
    target = torch.arange(64).reshape(1, 4, 4, 4) % 3
    outputs = [torch.zeros(1, 3, 4, 4, 4), torch.zeros(1, 3, 2, 2, 2), torch.zeros(1, 3, 1, 2, 2)]
    value = loss(outputs, target)
    assert value.item() == pytest.approx((4 * 1 + 2 * 2 + 1 * 4) / 7)
    assert [tuple(t.shape) for t in inner.targets] == [(1, 4, 4, 4), (1, 2, 2, 2), (1, 1, 2, 2)]
    assert inner.targets[0] is target
    assert inner.targets[1].dtype == target.dtype
    assert torch.equal(inner.targets[1], target[:, ::2, ::2, ::2])  # labels stay labels: nearest, no blending
    assert torch.equal(inner.targets[2], target[:, ::4, ::2, ::2])


def test_multilabel_targets_are_area_pooled(registry):
    inner = Recorder([0.0, 0.0])
    loss = DeepSupervisionLoss(inner, 0.5, 0, multilabel=True)
    target = torch.zeros(1, 2, 4, 4, 4)
    target[:, 0, :1] = 1  # channel 0: first slice only
    target[:, 1] = 1
    loss([torch.zeros(1, 2, 4, 4, 4), torch.zeros(1, 2, 2, 2, 2)], target)
    low = inner.targets[1]
    assert low.shape == (1, 2, 2, 2, 2)
    assert torch.allclose(low[:, 0, 0], torch.full((1, 2, 2), 0.5)) and (low[:, 0, 1] == 0).all()
    assert (low[:, 1] == 1).all()


def test_a_single_tensor_goes_to_the_inner_loss_unchanged(registry):
    loss = _build(registry)
    logits, target = torch.randn(1, 2, 4, 4, 4), torch.randint(0, 2, (1, 4, 4, 4))
    inner = registry.resolve("metric", "dice-ce").build({}, RunContext())
    assert loss(logits, target).item() == pytest.approx(inner(logits, target).item())


def test_inner_params_reach_the_inner_loss_and_dice_becomes_a_loss(registry):
    loss = _build(registry, {"loss": {"name": "dice", "params": {"smooth": 1.0, "multilabel": True}}})
    assert loss.inner.role == "loss" and loss.inner.soft.smooth == 1.0 and loss.multilabel is True
    logits = torch.zeros(1, 1, 2, 2, 2)
    with torch.no_grad():  # even without gradients, the wrapped dice is the soft loss
        assert loss([logits], torch.ones(1, 1, 2, 2, 2)).item() == pytest.approx(1 - (8 + 1) / (4 + 8 + 1))


def test_trains_a_deep_supervised_unet_end_to_end(registry):
    net = registry.resolve("model", "unet3d-vgg-deep").build(
        {"base_features": 4, "max_features": 16, "num_pools": [2, 3, 3], "deep_supervision": True},
        RunContext(num_classes=2),
    )
    loss = _build(registry, num_classes=2)
    x, y = torch.randn(2, 1, 8, 16, 16), torch.randint(0, 3, (2, 8, 16, 16))
    value = loss(net.train()(x), y)
    value.backward()
    assert torch.isfinite(value)
    assert [n for n, p in net.named_parameters() if p.grad is None] == []  # zero-weight heads included (DDP)


@pytest.fixture
def config_registry(biom3d_plugins, registry):
    # the paper's stack takes its dataset from biom3d-io: with it, the stack fills every other slot
    import biom3d.io.plugin as io_plugin

    return biom3d_plugins.register(io_plugin, name="io")


def _validate(registry, loss):
    return validate({"model": "models/unet3d-vgg-deep", "loss": loss}, registry=registry)


def test_config_resolves_the_inner_loss_to_a_qualified_id_with_every_default(config_registry):
    cfg = _validate(
        config_registry,
        {"name": "deep-supervision", "params": {"loss": {"name": "dice-ce", "params": {"smooth": 0.1}}}},
    )
    assert cfg.loss.name == "models/deep-supervision"
    inner = cfg.loss.params["loss"]
    assert inner["name"] == "models/dice-ce"
    assert inner["params"]["smooth"] == 0.1 and inner["params"]["ce_weight"] == 1.0
    default = _validate(config_registry, "deep-supervision")
    assert default.loss.params["loss"]["name"] == "models/dice-ce" and default.loss.params["weight_factor"] == 0.5
    # a resolved config validates again to the same thing
    again = validate({"model": "models/unet3d-vgg-deep", "loss": cfg.loss.model_dump()}, registry=config_registry)
    assert again.loss == cfg.loss


@pytest.mark.parametrize(
    ("inner", "path", "needle"),
    [
        ({"name": "dice-ce", "params": {"smooth": -1}}, "loss.params.loss.params.smooth", "greater than 0"),
        ({"name": "dice-ce", "params": {"smoth": 1}}, "loss.params.loss.params.smoth", "unknown key"),
        ({"name": "dcie"}, "loss.params.loss.name", "Did you mean"),
        ({"name": "iou"}, "loss.params.loss.name", "cannot be used as a loss"),
        ({"name": "deep-supervision"}, "loss.params.loss.name", "cannot wrap itself"),
        ({"name": "dice-ce", "bogus": 1}, "loss.params.loss.bogus", "unknown key"),
    ],
)
def test_inner_loss_mistakes_are_config_errors_with_paths(config_registry, inner, path, needle):
    with pytest.raises(ConfigError) as info:
        _validate(config_registry, {"name": "deep-supervision", "params": {"loss": inner, "weight_factor": 2}})
    problems = {p.path: p.message for p in info.value.problems}
    assert needle in problems[path]
    assert "loss.params.weight_factor" in problems  # reported together with the outer params' problems

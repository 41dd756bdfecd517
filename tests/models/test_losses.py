"""Losses against hand-computed values on tiny tensors, empty foreground, and shape/label mismatches."""

import math

import pytest
import torch

from biom3d.core.context import RunContext

LN3 = math.log(3.0)
SMOOTH = 1e-5


def _loss(registry, name, params=None, **ctx):
    return registry.resolve("metric", name).build(params or {}, RunContext(**ctx))


def _softmax_logits(p1: float = 0.75) -> torch.Tensor:
    """(1, 2, 2, 2, 2) logits whose softmax gives foreground probability ``p1`` at every voxel."""
    logits = torch.zeros(1, 2, 2, 2, 2)
    logits[:, 1] = math.log(p1 / (1 - p1))
    return logits


def _labels(n_fg: int) -> torch.Tensor:
    t = torch.zeros(1, 2, 2, 2, dtype=torch.long)
    t.view(-1)[:n_fg] = 1
    return t


def test_dice_ce_matches_hand_computation(registry):
    loss = _loss(registry, "dice-ce")
    logits, target = _softmax_logits(0.75), _labels(2)
    # foreground only: intersection 2 * 0.75, |P| = 8 * 0.75, |T| = 2
    dice = (2 * 1.5 + SMOOTH) / (6 + 2 + SMOOTH)
    ce = (2 * -math.log(0.75) + 6 * -math.log(0.25)) / 8
    assert loss(logits, target).item() == pytest.approx(1 - dice + ce, rel=1e-5)
    # (B, 1, D, H, W) labels and float-typed labels are read the same way
    assert loss(logits, target.unsqueeze(1).float()).item() == pytest.approx(1 - dice + ce, rel=1e-5)


def test_weights_and_background_option(registry):
    logits, target = _softmax_logits(0.75), _labels(2)
    ce = (2 * -math.log(0.75) + 6 * -math.log(0.25)) / 8
    assert _loss(registry, "dice-ce", {"dice_weight": 0})(logits, target).item() == pytest.approx(ce, rel=1e-5)
    assert _loss(registry, "ce")(logits, target).item() == pytest.approx(ce, rel=1e-5)
    dice_fg = (3 + SMOOTH) / (8 + SMOOTH)
    dice_bg = (2 * 6 * 0.25 + SMOOTH) / (2 + 6 + SMOOTH)
    with_bg = _loss(registry, "dice-ce", {"ce_weight": 0, "include_background": True})(logits, target)
    assert with_bg.item() == pytest.approx(1 - (dice_fg + dice_bg) / 2, rel=1e-5)


def test_batch_dice_pools_images_while_per_image_dice_averages_them(registry):
    logits = torch.cat([_softmax_logits(0.75), _softmax_logits(0.75)])
    target = torch.cat([_labels(2), _labels(6)])
    pooled = (2 * 0.75 * 8 + SMOOTH) / (12 + 8 + SMOOTH)
    per_image = ((3 + SMOOTH) / (8 + SMOOTH) + (9 + SMOOTH) / (12 + SMOOTH)) / 2
    assert _loss(registry, "dice", {"role": "loss"})(logits, target).item() == pytest.approx(1 - pooled, rel=1e-5)
    loss = _loss(registry, "dice", {"role": "loss", "batch_dice": False})
    assert loss(logits, target).item() == pytest.approx(1 - per_image, rel=1e-5)


def test_multilabel_losses_use_sigmoid(registry):
    logits = torch.zeros(1, 1, 2, 2, 2)  # sigmoid 0.5 everywhere
    target = torch.zeros(1, 1, 2, 2, 2)
    target.view(-1)[:4] = 1
    dice = (2 * 0.5 * 4 + SMOOTH) / (4 + 4 + SMOOTH)
    expected = 1 - dice + math.log(2)
    assert _loss(registry, "dice-ce", multilabel=True)(logits, target).item() == pytest.approx(expected, rel=1e-5)
    assert _loss(registry, "dice-ce", {"multilabel": True})(logits, target).item() == pytest.approx(expected, rel=1e-5)
    assert _loss(registry, "dice-bce")(logits, target).item() == pytest.approx(expected, rel=1e-5)
    assert _loss(registry, "bce")(logits, target).item() == pytest.approx(math.log(2), rel=1e-5)
    assert _loss(registry, "ce", multilabel=True)(logits, target).item() == pytest.approx(math.log(2), rel=1e-5)
    # a binary (B, D, H, W) mask is accepted for one sigmoid channel
    assert _loss(registry, "bce")(logits, target[:, 0]).item() == pytest.approx(math.log(2), rel=1e-5)


def test_multilabel_channels_overlap(registry):
    logits = torch.full((1, 2, 2, 2, 2), -20.0)
    logits[:, :, 0] = 20.0  # both channels predict the first slice
    target = torch.zeros(1, 2, 2, 2, 2)
    target[:, :, 0] = 1  # a voxel may belong to both labels
    assert _loss(registry, "dice-ce", multilabel=True)(logits, target).item() == pytest.approx(0.0, abs=1e-6)


def test_mse_compares_probabilities_with_the_one_hot_target(registry):
    logits, target = _softmax_logits(0.75), _labels(2)
    # foreground voxels: (0.25 - 0)^2 + (0.75 - 1)^2 ; background voxels: (0.25 - 1)^2 + (0.75 - 0)^2
    expected = (2 * (0.0625 + 0.0625) + 6 * (0.5625 + 0.5625)) / 16
    assert _loss(registry, "mse")(logits, target).item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("name", ["dice-ce", "dice", "ce", "mse"])
@pytest.mark.parametrize("confident", [True, False])
def test_no_nan_on_empty_foreground(registry, name, confident):
    loss = _loss(registry, name, {"role": "loss"} if name == "dice" else {}, num_classes=2)
    logits = torch.zeros(2, 3, 4, 4, 4, requires_grad=True)
    with torch.no_grad():
        if confident:
            logits[:, 0] = 30.0  # a perfect empty prediction
    value = loss(logits, torch.zeros(2, 4, 4, 4, dtype=torch.long))
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(logits.grad).all()
    if name == "dice-ce" and confident:
        assert value.item() == pytest.approx(0.0, abs=1e-3)  # nothing to predict, nothing predicted


@pytest.mark.parametrize("name", ["dice-bce", "bce"])
def test_no_nan_on_empty_multilabel_foreground(registry, name):
    logits = torch.full((1, 2, 4, 4, 4), -30.0, requires_grad=True)
    value = _loss(registry, name)(logits, torch.zeros(1, 2, 4, 4, 4))
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(logits.grad).all() and value.item() < 1e-3


def test_gradient_pushes_towards_the_target(registry):
    logits = _softmax_logits(0.5).requires_grad_()
    _loss(registry, "dice-ce")(logits, _labels(8)).backward()
    assert (logits.grad[:, 1] < 0).all() and (logits.grad[:, 0] > 0).all()


@pytest.mark.parametrize(
    ("ctx", "logits_shape", "target", "needle"),
    [
        ({}, (1, 2, 4, 4, 4), torch.zeros(1, 3, 4, 4, 4), "label map"),  # wrong channel count
        ({}, (1, 2, 4, 4, 4), torch.full((1, 4, 4, 4), 2), "[0, 1]"),  # label value >= out_channels
        ({}, (1, 2, 4, 4, 4), torch.full((1, 4, 4, 4), -1), "[0, 1]"),  # negative label
        ({}, (1, 2, 4, 4, 4), torch.full((1, 4, 4, 4), 0.5), "integers"),  # non-integer label
        ({}, (1, 2, 4, 4, 4), torch.zeros(1, 4, 4, 2, dtype=torch.long), "spatial sizes differ"),
        ({}, (2, 2, 4, 4, 4), torch.zeros(1, 4, 4, 4, dtype=torch.long), "batch sizes differ"),
        ({}, (1, 1, 4, 4, 4), torch.zeros(1, 4, 4, 4, dtype=torch.long), "multilabel: true"),
        ({"multilabel": True}, (1, 2, 4, 4, 4), torch.zeros(1, 4, 4, 4), "(B, 2, D, H, W)"),
        ({"multilabel": True}, (1, 2, 4, 4, 4), torch.full((1, 2, 4, 4, 4), 2.0), "[0, 1]"),
        ({"multilabel": True}, (1, 2, 4, 4, 4), torch.zeros(1, 2, 4, 4, 8), "spatial sizes differ"),
    ],
)
def test_mismatched_output_and_target_raise_a_clear_error(registry, ctx, logits_shape, target, needle):
    loss = _loss(registry, "dice-ce", **ctx)
    with pytest.raises(ValueError) as info:
        loss(torch.zeros(logits_shape), target)
    message = str(info.value)
    assert message.startswith("dice-ce: ")
    assert str(logits_shape) in message and str(tuple(target.shape)) in message
    assert needle in message


def test_a_plain_loss_given_deep_supervision_outputs_says_to_wrap_it(registry):
    outputs = [torch.zeros(1, 2, 4, 4, 4), torch.zeros(1, 2, 2, 2, 2)]
    for name in ("dice-ce", "ce", "bce", "mse", "dice"):
        with pytest.raises(ValueError, match="deep-supervision") as info:
            _loss(registry, name)(outputs, torch.zeros(1, 4, 4, 4, dtype=torch.long))
        assert f"{{name: {name}}}" in str(info.value)

"""The MONAI losses take biom3d's targets: label maps (softmax runs) and multi-label masks (sigmoid runs)."""

import math

import pytest
import torch
from monai import losses as ml

from biom3d.core.context import RunContext

LABEL = RunContext(num_classes=2)  # 3 output channels, softmax
MULTI = RunContext(num_classes=2, multilabel=True)  # 2 output channels, sigmoid
NAMES = ["dice-loss", "dice-ce-loss", "dice-focal-loss", "tversky-loss", "generalized-dice-loss", "focal-loss"]


def _build(registry, name, ctx, **params):
    return registry.resolve("metric", name).build(params, ctx)


def test_dice_by_hand(registry):
    logits = torch.zeros(1, 2, 1, 1, 2)  # softmax 0.5 everywhere
    labels = torch.tensor([[[[1, 0]]]])  # (B, D, H, W)
    # foreground only: intersection 0.5, |p| + |g| = 2 -> loss 0.5
    assert _build(registry, "dice-loss", RunContext(num_classes=1))(logits, labels).item() == pytest.approx(
        0.5, abs=1e-4
    )
    multi = torch.tensor([[[[[1.0, 0.0]]], [[[0.0, 0.0]]]]])  # (B, K, D, H, W), sigmoid 0.5 everywhere
    # channel 1: 0.5 as above; channel 2: empty truth, 1 - (0 + eps) / (1 + eps) ~ 1; mean 0.75; BCE of 0.5 is ln 2
    assert _build(registry, "dice-loss", MULTI)(logits, multi).item() == pytest.approx(0.75, abs=1e-4)
    assert _build(registry, "dice-ce-loss", MULTI)(logits, multi).item() == pytest.approx(0.75 + math.log(2), abs=1e-4)


@pytest.mark.parametrize(
    ("name", "reference"),
    [
        ("dice-loss", lambda: ml.DiceLoss(include_background=False, to_onehot_y=True, softmax=True)),
        ("dice-ce-loss", lambda: ml.DiceCELoss(include_background=False, to_onehot_y=True, softmax=True)),
        ("dice-focal-loss", lambda: ml.DiceFocalLoss(include_background=False, to_onehot_y=True, softmax=True)),
        ("tversky-loss", lambda: ml.TverskyLoss(include_background=False, to_onehot_y=True, softmax=True)),
        (
            "generalized-dice-loss",
            lambda: ml.GeneralizedDiceLoss(include_background=False, to_onehot_y=True, softmax=True),
        ),
        ("focal-loss", lambda: ml.FocalLoss(to_onehot_y=True, use_softmax=True)),
    ],
)
def test_label_targets_match_monai(registry, name, reference):
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 6, 6, 6, requires_grad=True)
    labels = torch.randint(0, 3, (2, 6, 6, 6))
    loss = _build(registry, name, LABEL)
    expected = reference()(logits, labels[:, None])
    value = loss(logits, labels)
    assert value.item() == pytest.approx(expected.item(), rel=1e-5)
    assert loss(logits, labels[:, None]).item() == pytest.approx(expected.item(), rel=1e-5)  # (B, 1, ...) too
    value.backward()
    assert torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("name", NAMES)
def test_multilabel_targets_use_sigmoid_and_empty_foreground_is_finite(registry, name):
    torch.manual_seed(1)
    logits = torch.randn(2, 2, 6, 6, 6, requires_grad=True)
    masks = (torch.rand(2, 2, 6, 6, 6) > 0.7).float()
    loss = _build(registry, name, MULTI)
    value = loss(logits, masks)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(logits.grad).all()
    for ctx, target in ((MULTI, torch.zeros_like(masks)), (LABEL, torch.zeros(2, 6, 6, 6, dtype=torch.long))):
        out = _build(registry, name, ctx)(torch.randn(2, ctx.out_channels, 6, 6, 6), target)
        assert torch.isfinite(out), (name, ctx.multilabel)


def test_sigmoid_dice_ce_is_dice_plus_bce_and_activation_overrides_the_run(registry):
    torch.manual_seed(2)
    logits = torch.randn(1, 2, 5, 5, 5)
    masks = (torch.rand(1, 2, 5, 5, 5) > 0.5).float()
    dice = ml.DiceLoss(sigmoid=True)(logits, masks)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, masks)
    loss = _build(registry, "dice-ce-loss", MULTI, lambda_ce=0.5)
    assert loss(logits, masks).item() == pytest.approx((dice + 0.5 * bce).item(), rel=1e-5)
    forced = _build(registry, "dice-loss", LABEL, activation="sigmoid")
    assert forced(logits, masks).item() == pytest.approx(dice.item(), rel=1e-5)


def test_deep_supervision_lists_weight_each_output(registry):
    torch.manual_seed(3)
    full, half = torch.randn(1, 3, 8, 8, 8), torch.randn(1, 3, 4, 4, 4)
    labels = torch.randint(0, 3, (1, 8, 8, 8))
    loss = _build(registry, "dice-ce-loss", LABEL)
    assert loss.deep_supervision
    expected = (2 / 3) * loss(full, labels) + (1 / 3) * loss(half, labels[:, ::2, ::2, ::2])
    assert loss([full, half], labels).item() == pytest.approx(expected.item(), rel=1e-5)

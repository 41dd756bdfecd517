"""Metrics on discretised predictions: per-class Dice and IoU, absent classes, multi-label, and the 'dice' roles."""

import pytest
import torch
import torch.nn.functional as F

from biom3d.core.context import RunContext


def _metric(registry, name, params=None, **ctx):
    return registry.resolve("metric", name).build(params or {}, RunContext(**ctx))


def _logits_for(labels: torch.Tensor, channels: int) -> torch.Tensor:
    """Logits whose argmax is ``labels`` (B, D, H, W); the margin is small so soft and hard scores differ."""
    return F.one_hot(labels, channels).movedim(-1, 1).float() * 0.3


def test_per_class_dice_and_iou_of_a_hand_made_case(registry):
    target = torch.zeros(1, 2, 2, 2, dtype=torch.long)
    pred = torch.zeros(1, 2, 2, 2, dtype=torch.long)
    target.view(-1)[:4] = 1  # class 1: 4 voxels
    pred.view(-1)[2:6] = 1  # predicted on 4 voxels, 2 of them right
    target.view(-1)[6] = 2  # class 2: 1 voxel, missed
    logits = _logits_for(pred, 4)  # class 3: absent from both
    dice = _metric(registry, "dice", num_classes=3)
    iou = _metric(registry, "iou", num_classes=3)
    assert dice.per_class(logits, target).tolist() == pytest.approx([2 * 2 / 8, 0.0, 1.0])
    assert iou.per_class(logits, target).tolist() == pytest.approx([2 / 6, 0.0, 1.0])
    assert dice(logits, target).item() == pytest.approx((0.5 + 0 + 1) / 3)
    assert iou(logits, target).item() == pytest.approx((1 / 3 + 0 + 1) / 3)
    with_bg = _metric(registry, "iou", {"include_background": True}, num_classes=3).per_class(logits, target)
    assert with_bg.shape == (4,) and with_bg[0].item() == pytest.approx(1 / 6)  # bg: 4 predicted, 3 true, 1 shared


def test_scores_are_averaged_over_images_and_an_empty_image_scores_one(registry):
    target = torch.zeros(2, 4, 4, 4, dtype=torch.long)
    target[0, :2] = 1
    logits = _logits_for(target, 2)
    dice = _metric(registry, "dice")
    assert dice(logits, target).item() == pytest.approx(1.0)  # perfect on both, one of them empty
    logits = _logits_for(torch.zeros_like(target), 2)
    assert dice(logits, target).item() == pytest.approx(0.5)  # image 0 missed (0.0), image 1 empty and right (1.0)
    assert not torch.isnan(dice(logits, target))


def test_multilabel_metrics_threshold_sigmoid_at_one_half(registry):
    target = torch.zeros(1, 2, 2, 2, 2)
    target[:, 0, 0] = 1
    target[:, 1] = 1
    logits = torch.full((1, 2, 2, 2, 2), -1.0)
    logits[:, 0, 0] = 0.1  # channel 0 right
    logits[:, 1, :, 0] = 0.1  # channel 1: half of it
    dice = _metric(registry, "dice", multilabel=True)
    assert dice.per_class(logits, target).tolist() == pytest.approx([1.0, 2 * 4 / 12])
    assert _metric(registry, "iou", {"multilabel": True}).per_class(logits, target).tolist() == pytest.approx(
        [1.0, 0.5]
    )


def test_dice_is_the_hard_score_as_a_metric_and_one_minus_soft_dice_as_a_loss(registry):
    labels = torch.zeros(1, 2, 2, 2, dtype=torch.long)
    labels.view(-1)[:4] = 1
    logits = _logits_for(labels, 2)
    auto = _metric(registry, "dice")
    assert auto(logits, labels).item() == pytest.approx(1.0)  # no gradient wanted: the metric
    as_loss = auto(logits.clone().requires_grad_(), labels)  # a training step: the soft loss
    assert as_loss.requires_grad and 0.2 < as_loss.item() < 0.6
    pinned = _metric(registry, "dice", {"role": "metric"})
    assert pinned(logits.clone().requires_grad_(), labels).item() == pytest.approx(1.0)
    pinned_loss = _metric(registry, "dice", {"role": "loss"})
    with torch.no_grad():
        assert pinned_loss(logits, labels).item() == pytest.approx(as_loss.item())


def test_metrics_check_shapes_like_losses(registry):
    with pytest.raises(ValueError, match=r"iou: model output \(1, 2, 4, 4, 4\) and target \(1, 4, 4, 4\)"):
        _metric(registry, "iou")(torch.zeros(1, 2, 4, 4, 4), torch.full((1, 4, 4, 4), 5))

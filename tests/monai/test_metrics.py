"""Metrics score discretised predictions per class; empty-empty classes are perfect, never NaN."""

import pytest
import torch

from biom3d.core.context import RunContext


def _logits(labels: torch.Tensor, channels: int) -> torch.Tensor:
    """Logits whose argmax is ``labels`` (B, D, H, W)."""
    return torch.nn.functional.one_hot(labels, channels).movedim(-1, 1).float() * 10 - 5


def _metric(registry, name, ctx, **params):
    return registry.resolve("metric", name).build(params, ctx)


def test_dice_and_iou_per_class(registry):
    truth = torch.zeros(1, 4, 4, 4, dtype=torch.long)
    truth[0, 0, 0, :2] = 1  # class 1: 2 voxels
    pred = truth.clone()
    pred[0, 1, 1, 0] = 1  # one false positive: Dice 2*2/(3+2) = 0.8, IoU 2/3
    ctx = RunContext(num_classes=3)  # class 2 and 3 empty in both -> 1.0
    dice = _metric(registry, "dice-metric", ctx)
    assert dice.per_class(_logits(pred, 4), truth).tolist() == pytest.approx([0.8, 1.0, 1.0])
    assert dice(_logits(pred, 4), truth).item() == pytest.approx(2.8 / 3)
    iou = _metric(registry, "MeanIoU", ctx)
    assert iou.per_class(_logits(pred, 4), truth).tolist() == pytest.approx([2 / 3, 1.0, 1.0])
    with_bg = _metric(registry, "dice-metric", ctx, include_background=True).per_class(_logits(pred, 4), truth)
    assert with_bg.shape == (4,) and 0.9 < with_bg[0] < 1
    # a prediction on an empty class scores 0, not NaN
    pred[0, 3, 3, 3] = 2
    assert dice.per_class(_logits(pred, 4), truth)[1].item() == 0.0


def test_multilabel_metrics_threshold_sigmoid(registry):
    masks = torch.zeros(2, 2, 4, 4, 4)
    masks[:, 0, 1, 1, 1] = 1
    logits = masks * 10 - 5
    logits[0, 0, 1, 1, 1] = -1  # missed in the first image
    scores = _metric(registry, "dice-metric", RunContext(num_classes=2, multilabel=True)).per_class(logits, masks)
    assert scores.tolist() == pytest.approx([0.5, 1.0])  # mean over the batch of (0, 1); empty channel 2 -> 1


def test_hausdorff_in_spacing_units_with_defined_empty_cases(registry):
    truth = torch.zeros(1, 8, 8, 8, dtype=torch.long)
    pred = truth.clone()
    truth[0, 1, 4, 4] = 1
    pred[0, 4, 4, 4] = 1
    hd = _metric(registry, "hausdorff", RunContext(num_classes=2))
    assert hd.per_class(_logits(pred, 3), truth).tolist() == pytest.approx([3.0, 0.0])  # class 2 empty-empty: 0
    physical = _metric(registry, "HausdorffDistanceMetric", RunContext(num_classes=2, spacing=(2.0, 1.0, 1.0)))
    assert physical.per_class(_logits(pred, 3), truth)[0].item() == pytest.approx(6.0)
    missing = hd.per_class(_logits(torch.zeros_like(pred), 3), truth)
    assert torch.isfinite(missing).all() and missing[0].item() == pytest.approx(7 * 3**0.5)  # worst case: diagonal


def test_deep_supervision_outputs_score_the_full_resolution(registry):
    truth = torch.randint(0, 2, (1, 4, 4, 4))
    dice = _metric(registry, "dice-metric", RunContext(num_classes=1))
    assert dice([_logits(truth, 2), torch.zeros(1, 2, 2, 2, 2)], truth).item() == pytest.approx(1.0)


def test_class_labels_follow_the_background_setting():
    from biom3d.monai.metrics import SegMetric

    assert SegMetric(None, sigmoid=False, include_background=True).class_labels(3) == [0, 1, 2]
    assert SegMetric(None, sigmoid=False, include_background=False).class_labels(2) == [1, 2]
    assert SegMetric(None, sigmoid=True, include_background=True).class_labels(2) == [1, 2]

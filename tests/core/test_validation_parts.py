"""Validation scores the image only: padding a dataset marks as such never reaches the loss or the metrics."""

import torch

from biom3d.core.builtins.trainer import image_parts


def _batch():
    output = torch.zeros(2, 2, 6, 6, 6)
    output[:, 1] = 5.0  # the network marks everything foreground, padding included
    target = torch.zeros(2, 6, 6, 6, dtype=torch.long)
    valid = torch.zeros(2, 1, 6, 6, 6, dtype=torch.bool)
    valid[0, 0, :, :, :] = True  # item 0 lies inside its volume
    valid[1, 0, 2:5, :, 1:4] = True  # item 1 left its thin validation slab on two axes
    target[1, 2:5, :, 1:4] = 1
    return output, target, valid


def test_padded_items_are_cut_to_their_image():
    output, target, valid = _batch()
    parts = image_parts(output, target, valid)
    assert [tuple(o.shape) for o, _ in parts] == [(1, 2, 6, 6, 6), (1, 2, 3, 6, 3)]
    assert [tuple(t.shape) for _, t in parts] == [(1, 6, 6, 6), (1, 3, 6, 3)]
    assert bool((parts[1][1] == 1).all())  # what is left of item 1 is all image, all foreground


def test_dice_of_the_image_alone():
    output, target, valid = _batch()

    def dice(parts):
        scores = []
        for out, tgt in parts:
            pred = out.argmax(1) == 1
            ref = tgt == 1
            denom = pred.sum() + ref.sum()
            scores.append(float(2 * (pred & ref).sum() / denom) if denom else 1.0)
        return sum(scores) / len(scores)

    # item 0 holds no foreground (Dice 0); item 1's Dice is 1 on its image (54 voxels). Scored whole, the
    # marked padding of item 1 joins the false positives: 2*54 / (432 + 54)
    assert dice(image_parts(output, target, valid)) == 0.5
    assert abs(dice(image_parts(output, target, None)) - 108 / 486) < 1e-6


def test_multilabel_targets_keep_their_channels():
    output, _, valid = _batch()
    target = torch.zeros(2, 2, 6, 6, 6)
    parts = image_parts(output, target, valid)
    assert [tuple(t.shape) for _, t in parts] == [(1, 2, 6, 6, 6), (1, 2, 3, 6, 3)]


def test_without_padding_the_batch_is_scored_whole():
    output, target, _ = _batch()
    parts = image_parts(output, target, torch.ones(2, 1, 6, 6, 6, dtype=torch.bool))
    assert len(parts) == 1 and parts[0][0] is output

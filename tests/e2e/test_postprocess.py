import numpy as np

from biom3d.core.builtins.postprocess import Argmax, KeepLargest, RemoveSmall, Threshold


def _mask():
    mask = np.zeros((20, 40, 40), np.uint8)
    mask[5:15, 5:20, 5:20] = 1  # a blob of 2250 voxels
    mask[6:12, 25:33, 25:33] = 1  # a second object, 384 voxels
    rng = np.random.default_rng(0)
    noise = rng.random(mask.shape) > 0.995  # scattered single voxels
    noise[:, :22, :22] = False
    noise[:, 23:35, 23:35] = False
    return mask, mask | noise


def test_blob_survives_small_component_filter_and_noise_does_not():
    truth, noisy = _mask()
    cleaned = RemoveSmall(None, None)(noisy)
    assert noisy.sum() > truth.sum() + 50
    assert np.array_equal(cleaned, truth)


def test_keep_largest_is_per_class():
    truth, noisy = _mask()
    labels = noisy.copy()
    labels[6:12, 25:33, 25:33] = 2  # the second object is another class
    kept = KeepLargest(None)(labels)
    assert (kept == 1).sum() == 2250 and (kept == 2).sum() == 384
    only_one = KeepLargest([1])(labels)
    assert (only_one == 2).sum() == (labels == 2).sum()


def test_discretisation():
    probs = np.zeros((3, 2, 2, 2), np.float32)
    probs[0], probs[2, 0] = 0.6, 0.9
    assert Argmax()(probs).tolist() == [[[2, 2], [2, 2]], [[0, 0], [0, 0]]]
    assert Threshold(0.5)(probs).sum() == 8 + 4
    multilabel = Threshold(0.5)(probs)
    assert RemoveSmall(None, 5)(multilabel).shape == multilabel.shape

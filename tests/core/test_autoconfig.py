"""Auto-configuration against hand-computed applications of the paper's formula."""

import math

import pytest

from biom3d.core.builtins.autoconfig import _reduce, auto_config
from biom3d.core.geometry import aug_patch_size, pool_strides, rotation_plane


@pytest.mark.parametrize(
    "median, patch, pools, batch, aug",
    [
        # already at the maximum volume: no reduction, 5 poolings, cubic diagonal for 3D rotations
        ((128, 128, 128), (128, 128, 128), (5, 5, 5), 2, (222, 222, 222)),
        ((256, 256, 256), (128, 128, 128), (5, 5, 5), 2, (222, 222, 222)),
        # small and anisotropic: kept whole; rotations stay in the (H, W) plane
        ((32, 128, 128), (32, 128, 128), (3, 5, 5), 8, (32, 182, 182)),
        # long axis: reduced by exp(1.562/3) on each axis -> (594.2, 59.4, 59.4); pools (5, 3, 3);
        # rounded to (608, 56, 56), then grown by one 32-step on axis 0 under the 128^3 budget
        ((1000, 100, 100), (640, 56, 56), (5, 3, 3), 2, (640, 80, 80)),
        # a 2-slice stack: axis 0 hits its upper bound (d >= 1); the others share the reduction
        ((2, 4000, 4000), (1, 1440, 1440), (0, 5, 5), 2, (1, 2037, 2037)),
        # the example: only the two short axes rotate, 64 * sqrt(2) = 90.5 -> 91
        ((320, 64, 64), (320, 64, 64), (5, 4, 4), 3, (320, 91, 91)),
    ],
)
def test_table_of_median_shapes(median, patch, pools, batch, aug):
    result = auto_config(median)
    assert (result.patch_size, result.num_pools, result.batch_size, result.aug_patch_size) == (patch, pools, batch, aug)


def test_reduction_keeps_proportions_and_volume():
    d = _reduce([300.0, 600.0, 900.0], [128.0] * 3)
    assert d[1] / d[0] == pytest.approx(2.0) and d[2] / d[0] == pytest.approx(3.0)
    assert math.prod(d) == pytest.approx(128**3, rel=1e-6)


def test_patch_is_a_multiple_of_its_pooling_and_fits_the_budget():
    for median in [(77, 301, 299), (13, 512, 512), (200, 200, 50), (999, 17, 333)]:
        r = auto_config(median)
        assert all(s % 2**p == 0 for s, p in zip(r.patch_size, r.num_pools, strict=True)), r
        assert math.prod(r.patch_size) <= 128**3
        # never more than one pooling step beyond the median (nnU-Net pads up)
        assert all(s < m + 2**p for s, m, p in zip(r.patch_size, median, r.num_pools, strict=True)), r
        assert all(p == max(0, min(5, math.floor(math.log2(s / 4)))) or s == 2**p for s, p in zip(r.patch_size, r.num_pools, strict=True))


def test_small_images_get_a_bounded_batch():
    assert auto_config((8, 8, 8)).batch_size == 16
    assert auto_config((8, 8, 8), max_batch=4).batch_size == 4
    assert auto_config((512, 512, 512)).batch_size == 2


def test_pool_strides_tables():
    assert pool_strides((3, 5, 5)) == [(1, 2, 2), (2, 2, 2), (2, 2, 2), (2, 2, 2), (1, 2, 2)]
    assert pool_strides((5, 5, 5)) == [(2, 2, 2)] * 5
    assert pool_strides((0, 4, 4)) == [(1, 2, 2)] * 4
    assert pool_strides((2, 5, 5)) == [(1, 2, 2), (2, 2, 2), (2, 2, 2), (1, 2, 2), (1, 2, 2)]
    assert pool_strides((4, 2, 3)) == [(2, 1, 2), (2, 2, 2), (2, 2, 2), (2, 1, 1)]
    for pools in [(3, 5, 5), (1, 4, 2), (0, 0, 3)]:
        table = pool_strides(pools)
        assert [math.prod(s[a] for s in table) for a in range(3)] == [2**p for p in pools]


def test_rotation_plane():
    assert rotation_plane((64, 64, 64)) == (0, 1, 2)
    assert rotation_plane((64, 96, 160)) == (0, 1, 2)  # 2.5x: still rotate in 3D
    assert rotation_plane((16, 128, 128)) == (1, 2)
    assert rotation_plane((320, 64, 64)) == (1, 2)
    assert aug_patch_size((16, 128, 128)) == (16, 182, 182)


def test_bad_inputs():
    with pytest.raises(ValueError):
        auto_config((0, 10, 10))
    with pytest.raises(ValueError):
        auto_config((10, 10, 10, 10))


def test_rotation_plane_tie_keeps_the_thin_axis_out():
    assert rotation_plane((32, 128, 64)) == (1, 2)
    assert aug_patch_size((32, 128, 64)) == (32, 144, 144)


def test_small_budgets_keep_two_voxels_at_the_bottleneck():
    # 16x32x32 with max_dim 32 and 5 poolings once gave pools (4, 5, 5): a 1-voxel bottleneck that instance norm
    # cannot normalise
    auto = auto_config([16, 32, 32], max_dim=32, max_pool=5)
    assert all(p // 2**n >= 2 for p, n in zip(auto.patch_size, auto.num_pools, strict=True))
    assert auto_config([128, 128, 128]).num_pools == (5, 5, 5)  # the paper's default budget is unchanged

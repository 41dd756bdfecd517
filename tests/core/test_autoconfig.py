"""Auto-configuration: the paper's rule (checked case by case against a table produced by running the
original), its properties, and the shared patch geometry."""

import json
import math
from pathlib import Path

import numpy as np
import pytest

from biom3d.core.builtins.autoconfig import _reduce, auto_config
from biom3d.core.geometry import aug_patch_size, background_value, pool_strides, rotation_plane

TABLE = json.loads((Path(__file__).parent / "data" / "autoconfig_original.json").read_text(encoding="utf-8"))["cases"]
KEYS = ("patch_size", "num_pools", "batch_size", "aug_patch_size")


@pytest.mark.parametrize("case", TABLE, ids=lambda c: f"{'x'.join(map(str, c['median']))}-{c['max_dim']}-n{c['num_images']}")
def test_agrees_with_the_original(case):
    """Values obtained by running biom3d 0.1.2's auto_config (benchmarks/bench_autoconfig.py --write)."""
    mine = auto_config(case["median"], max_dim=case["max_dim"], num_images=case["num_images"]).as_dict()
    assert [mine[k] for k in KEYS] == [case[k] for k in KEYS]


def test_the_table_covers_the_issue():
    assert len(TABLE) >= 30
    assert {c["max_dim"] for c in TABLE} >= {64, 128}
    assert {c["num_images"] for c in TABLE} >= {None, 1, 10, 100}


@pytest.mark.parametrize("median, max_dim, patch, pools", [
    ((96, 256, 256), 128, (80, 160, 160), (4, 5, 5)),
    ((96, 256, 256), 64, (64, 64, 64), (5, 5, 5)),
    ((120, 120, 120), 128, (128, 128, 128), (5, 5, 5)),
    ((300, 60, 60), 96, (320, 48, 48), (5, 4, 4)),
])
def test_the_issues_examples(median, max_dim, patch, pools):
    result = auto_config(median, max_dim=max_dim)
    assert (result.patch_size, result.num_pools) == (patch, pools)


@pytest.mark.parametrize("median", [(96, 256, 256), (60, 128, 128), (13, 512, 512), (400, 40, 40), (77, 77, 77)])
@pytest.mark.parametrize("max_dim", [64, 96, 128, 192])
def test_symmetric_medians_give_symmetric_patches(median, max_dim):
    result = auto_config(median, max_dim=max_dim)
    twins = [(a, b) for a in range(3) for b in range(a + 1, 3) if median[a] == median[b]]
    for a, b in twins:
        assert result.patch_size[a] == result.patch_size[b] and result.num_pools[a] == result.num_pools[b]


def test_batch_follows_the_number_of_images():
    # the paper's cap: images // 20, at least 2; small patches would otherwise get 2 * 128^3 / patch
    assert auto_config((16, 64, 64), num_images=1).batch_size == 2
    assert auto_config((16, 64, 64), num_images=10).batch_size == 2
    assert auto_config((16, 64, 64), num_images=100).batch_size == 5
    assert auto_config((16, 64, 64), num_images=2000).batch_size == 64  # 2 * floor(128^3 / (16 * 64 * 64))
    assert auto_config((16, 64, 64)).batch_size == 16  # no image count: the original's stand-alone cap
    assert auto_config((16, 64, 64), num_images=2000, max_batch=8).batch_size == 8  # a user's cap on top
    assert auto_config((512, 512, 512), num_images=2000).batch_size == 2


def test_reduction_keeps_proportions_and_volume():
    d = _reduce([300.0, 600.0, 900.0], [128.0] * 3)
    assert d[1] / d[0] == pytest.approx(2.0) and d[2] / d[0] == pytest.approx(3.0)
    assert math.prod(d) == pytest.approx(128**3, rel=1e-6)


@pytest.mark.parametrize("median", [(77, 301, 299), (13, 512, 512), (200, 200, 50), (999, 17, 333), (1, 700, 500)])
def test_patch_is_a_multiple_of_its_pooling_and_fits_the_budget(median):
    r = auto_config(median)
    assert all(s % 2**p == 0 for s, p in zip(r.patch_size, r.num_pools, strict=True)), r
    assert math.prod(r.patch_size) <= 128**3


def test_two_dimensional_images_keep_one_slice():
    assert auto_config((512, 512)).patch_size[0] == 1
    assert auto_config((1, 512, 512)) == auto_config((512, 512))


def test_small_budgets_keep_two_voxels_at_the_bottleneck():
    # with max_dim 32 and 5 poolings the paper's rule gives a 1-voxel bottleneck (16x32x32 -> pools (4, 5, 5))
    # that instance norm cannot normalise; the original crashes in training there
    auto = auto_config([16, 32, 32], max_dim=32, max_pool=5)
    assert all(p // 2**n >= 2 for p, n in zip(auto.patch_size, auto.num_pools, strict=True))
    assert auto_config([128, 128, 128]).num_pools == (5, 5, 5)  # the paper's default budget is unchanged


def test_bad_inputs():
    with pytest.raises(ValueError):
        auto_config((0, 10, 10))
    with pytest.raises(ValueError):
        auto_config((10, 10, 10, 10))


def test_pool_strides_tables():
    assert pool_strides((3, 5, 5)) == [(1, 2, 2), (2, 2, 2), (2, 2, 2), (2, 2, 2), (1, 2, 2)]
    assert pool_strides((5, 5, 5)) == [(2, 2, 2)] * 5
    assert pool_strides((0, 4, 4)) == [(1, 2, 2)] * 4
    assert pool_strides((2, 5, 5)) == [(1, 2, 2), (2, 2, 2), (2, 2, 2), (1, 2, 2), (1, 2, 2)]
    assert pool_strides((4, 2, 3)) == [(2, 1, 2), (2, 2, 2), (2, 2, 2), (2, 1, 1)]
    for pools in [(3, 5, 5), (1, 4, 2), (0, 0, 3)]:
        table = pool_strides(pools)
        assert [math.prod(s[a] for s in table) for a in range(3)] == [2**p for p in pools]


def test_rotation_plane_is_the_originals():
    assert rotation_plane((64, 64, 64)) == (0, 1, 2)
    assert rotation_plane((64, 96, 160)) == (0, 1, 2)  # 2.5x: still rotate in 3D
    assert rotation_plane((16, 128, 128)) == (1, 2)  # a thin z-stack rotates in-plane only
    assert rotation_plane((128, 16, 128)) == (0, 2)
    # a long tube: rotation about the first smallest axis, as the original's dataset does
    assert rotation_plane((320, 64, 64)) == (0, 2)


def test_aug_patch_is_the_originals():
    assert aug_patch_size((128, 128, 128)) == (222, 222, 222)  # the cube's diagonal, 221.7 rounded
    assert aug_patch_size((16, 128, 128)) == (16, 181, 181)  # 181.02
    assert aug_patch_size((32, 128, 64)) == (32, 143, 143)  # 143.1
    assert aug_patch_size((320, 64, 64)) == (326, 64, 326)


def test_background_reads_a_subsample_of_big_volumes():
    """The padding value of io's and monai's datasets alike."""
    vol = np.arange(2 * 8 * 4 * 4, dtype=np.float32).reshape(2, 8, 4, 4) - 5
    assert background_value(vol).tolist() == [-5.0, 123.0]
    vol[:, 1] = -100  # a slice the subsample skips
    assert background_value(vol, budget=64).tolist() == [-5.0, 123.0]  # every 2nd slice of the longest axis
    assert background_value(vol).tolist() == [-100.0, -100.0]

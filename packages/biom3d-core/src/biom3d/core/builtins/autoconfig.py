"""Auto-configuration: patch size, poolings per axis, batch size and the enlarged augmentation patch, from
the median image shape and the number of images (the Biom3d paper, Methods > Auto-configuration).

This follows the original biom3d's ``find_patch_pool_batch``, ``get_aug_patch`` and the batch cap of its
preprocessing step exactly, step by step, quirks included (``tests/core/test_autoconfig.py`` checks a
table produced by running the original), so that a dataset gets the patch the paper's results were obtained
with. The one deviation: budgets under 64 voxels a side, where the paper's rule leaves a 1-voxel bottleneck
that instance norm cannot train (the original crashes there), keep ``MIN_BOTTLENECK`` voxels instead.

Pure Python on purpose: `biom3d autoconfig` answers without numpy or torch.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from biom3d.core.geometry import aug_patch_size

EPSILON = 1e-3  # the reduction divides the median by (1 + EPSILON) a whole number of times per axis
MIN_BATCH = 2
STANDALONE_MAX_BATCH = 16  # the original's `auto_config` cap when no image count is known
IMAGES_PER_BATCH_ITEM = 20  # the original's preprocessing caps the batch at images // 20 "to avoid overfitting"
# feature-map side at the bottleneck, at least: instance norm needs more than one voxel (only budgets under 64
# voxels a side reach this floor; the paper's default, 128 and 5 poolings, gives 4)
MIN_BOTTLENECK = 2


@dataclass(frozen=True)
class AutoConfig:
    patch_size: tuple[int, ...]
    num_pools: tuple[int, ...]
    batch_size: int
    aug_patch_size: tuple[int, ...]

    def as_dict(self) -> dict[str, list[int] | int]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def auto_config(
    median_shape: Sequence[float],
    *,
    max_dim: int = 128,
    max_pool: int = 5,
    num_images: int | None = None,
    max_batch: int | None = None,
) -> AutoConfig:
    """Patch, pooling, batch and augmentation patch for a dataset of this median shape.

    ``num_images`` applies the paper's batch cap (images // 20, at least 2): a small dataset trains with
    batch 2 whatever its patch size. Without it the original's stand-alone cap of 16 applies. ``max_batch``
    is an extra cap of the user's.
    """
    if len(median_shape) not in (2, 3) or any(s < 1 for s in median_shape):
        raise ValueError(f"median shape must have 2 or 3 positive sizes, got {list(median_shape)}")
    if max_dim < 1 or not 0 <= max_pool <= 10:
        raise ValueError("max_dim must be >= 1 and max_pool within 0..10")
    # the original's median is an integer array (numpy's median cast with astype(int)); 2D images are 1 x H x W
    median = [int(s) for s in median_shape]
    if len(median) == 2:
        median = [1, *median]
    patch, pools, batch = _patch_pool_batch(median, max_dim, max_pool)
    cap = STANDALONE_MAX_BATCH if num_images is None else num_images // IMAGES_PER_BATCH_ITEM
    if max_batch is not None:
        cap = min(cap, max_batch)
    batch = max(min(batch, cap), MIN_BATCH)
    return AutoConfig(patch, pools, batch, aug_patch_size(patch))


def _patch_pool_batch(median: list[int], max_dim: int, max_pool: int) -> tuple[tuple[int, ...], tuple[int, ...], int]:
    """The original's ``find_patch_pool_batch`` with cubic ``max_dims``."""
    budget = max_dim ** len(median)
    min_fmaps = max(max_dim // 2**max_pool, MIN_BOTTLENECK)
    dims = _reduce(median, [max_dim] * len(median)) if math.prod(median) > budget else [float(d) for d in median]
    dims = [max(math.floor(d), 1) for d in dims]
    steps = [2 ** _pools(d, min_fmaps, max_pool) for d in dims]
    patch = [(d // s) * s for d, s in zip(dims, steps, strict=True)]
    patch = _grow(patch, steps, median, budget)
    patch = [1 if m == 1 else p for p, m in zip(patch, median, strict=True)]  # a 1-voxel axis stays 1 voxel
    pools = tuple(_pools(p, min_fmaps, max_pool) for p in patch)  # recomputed from the grown patch
    batch = max(2 * math.floor(budget / math.prod(patch)), MIN_BATCH)
    return tuple(patch), pools, batch


def _pools(size: int, min_fmaps: int, max_pool: int) -> int:
    """Poolings that keep at least ``min_fmaps`` voxels: which interval [2^k, 2^(k+1)) size / min_fmaps is in."""
    return min(max(math.floor(math.log2(size / min_fmaps)), 0), max_pool)


def _reduce(shape: Sequence[float], max_dims: Sequence[float]) -> list[float]:
    """Shrink ``shape`` keeping its proportions until its volume is that of ``max_dims``, no axis below 1.

    Axes share one reduction order (a power of 1 + EPSILON); an axis it would shrink below 1 is clipped at its
    bound and the rest is shared by the others, re-checked the way the original's loop does.
    """
    log_e = math.log(1 + EPSILON)
    total = (sum(math.log(d) for d in shape) - sum(math.log(m) for m in max_dims)) / log_e
    upper = [math.log(d) / log_e for d in shape]
    reduction = [total / len(shape)] * len(shape)
    too_high = [r > u for r, u in zip(reduction, upper, strict=True)]
    while any(too_high):
        free = sum(not t for t in too_high)
        if free == 0:  # every axis at its bound: numpy's 0/0 would give nan, the original's dims then become 1
            return [1.0] * len(shape)
        shared = (total - sum(u for u, t in zip(upper, too_high, strict=True) if t)) / free
        reduction = [u if t else shared for u, t in zip(upper, too_high, strict=True)]
        too_high = [r > u for r, u in zip(reduction, upper, strict=True)]
    return [d / (1 + EPSILON) ** r for d, r in zip(shape, reduction, strict=True)]


def _grow(patch: list[int], steps: list[int], median: Sequence[int], budget: int) -> list[int]:
    """Grow the patch by pooling steps towards the budget: all distinct sizes together first, then every
    subset of them (the largest first), while the volume fits and some grown axis is still below the median.

    The original recomputes its list of distinct sizes before each subset but keeps the subset masks made
    for the first list; numpy then broadcasts the two, which ``_select`` reproduces.
    """
    distinct = sorted(set(patch), reverse=True)
    masks = list(itertools.product([True, False], repeat=len(distinct)))[:-1]
    for mask in masks:
        chosen = _select(sorted(set(patch), reverse=True), mask)
        grow = [p in chosen for p in patch]
        while True:
            grown = [p + s * g for p, s, g in zip(patch, steps, grow, strict=True)]
            below = any(g and p < m for p, m, g in zip(patch, median, grow, strict=True))
            if math.prod(grown) > budget or not below:
                break
            patch = grown
    return patch


def _select(distinct: list[int], mask: Sequence[bool]) -> set[int]:
    """``np.isin``'s second argument in the original: ``distinct * np.array(mask)``, broadcast like numpy
    (a length-1 side repeats); the zeros it leaves match no patch size."""
    if len(distinct) == len(mask):
        pairs = zip(distinct, mask, strict=True)
    elif len(distinct) == 1:
        pairs = ((distinct[0], m) for m in mask)
    elif len(mask) == 1:
        pairs = ((d, mask[0]) for d in distinct)
    else:  # numpy raises here; a patch with two sizes merged or split differently never reaches it in 3D
        raise ValueError(f"auto-configuration cannot grow patch sizes {distinct} with subset {list(mask)}")
    return {d for d, m in pairs if m}

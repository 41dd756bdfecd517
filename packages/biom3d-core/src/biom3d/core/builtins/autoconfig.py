"""Auto-configuration: patch size, poolings per axis, batch size and the enlarged augmentation patch, from
the median image shape alone (the Biom3d paper, Methods > Auto-configuration).

Pure Python on purpose: `biom3d autoconfig` answers without numpy or torch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from biom3d.core.geometry import aug_patch_size

EPSILON = 1e-3
REFERENCE_VOXELS = 2 * 128**3  # batch 2 of 128^3 fits a 10 GB GPU (the paper's default budget)
MAX_BATCH = 16  # small images must not get absurd batch sizes
# voxels per axis at the bottleneck, at least: instance norm needs more than one (the paper's budget, 128 and 5
# poolings, gives 4; only budgets under 64 reach this floor)
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
    max_batch: int = MAX_BATCH,
    memory_factor: float = 1.0,
) -> AutoConfig:
    """Patch, pooling, batch and augmentation patch for a dataset of this median shape.

    ``memory_factor`` scales the memory budget relative to the paper's 10 GB GPU (2 x 128^3 patches).
    """
    shape = [float(s) for s in median_shape]
    if len(shape) not in (2, 3) or any(s < 1 for s in shape):
        raise ValueError(f"median shape must have 2 or 3 positive sizes, got {list(median_shape)}")
    if max_dim < 1 or not 0 <= max_pool <= 10:
        raise ValueError("max_dim must be >= 1 and max_pool within 0..10")
    max_dims = [float(max_dim)] * len(shape)
    patch = _reduce(shape, max_dims)
    min_fmaps = max(max(max_dims) / 2**max_pool, MIN_BOTTLENECK)
    pools = tuple(_clip(math.floor(math.log2(d / min_fmaps)), 0, max_pool) for d in patch)
    sizes = [max(2**p, _round_to(d, 2**p)) for d, p in zip(patch, pools, strict=True)]
    sizes = _grow(_shrink(sizes, pools, shape, math.prod(max_dims)), pools, shape, math.prod(max_dims))
    batch = _clip(math.floor(memory_factor * REFERENCE_VOXELS / math.prod(sizes)), 2, max(2, max_batch))
    patch_size = tuple(int(s) for s in sizes)
    return AutoConfig(patch_size, pools, batch, aug_patch_size(patch_size))


def _reduce(shape: list[float], max_dims: list[float]) -> list[float]:
    """Shrink ``shape`` keeping its proportions until its volume is that of ``max_dims``; no axis below 1."""
    n = len(shape)
    if math.prod(shape) <= math.prod(max_dims):
        return list(shape)
    log_e = math.log(1 + EPSILON)
    total = sum(math.log(d / m) for d, m in zip(shape, max_dims, strict=True)) / log_e  # n * alpha*
    upper = [math.log(d) / log_e for d in shape]
    fixed: dict[int, float] = {}
    while True:
        free = [i for i in range(n) if i not in fixed]
        alpha = (total - sum(fixed.values())) / len(free)
        over = [i for i in free if alpha > upper[i]]
        if not over:
            break
        for i in over:
            fixed[i] = upper[i]
        if len(fixed) == n:
            break
    alphas = [fixed.get(i, alpha) for i in range(n)]
    return [d / (1 + EPSILON) ** a for d, a in zip(shape, alphas, strict=True)]


def _grow(sizes: list[int], pools: Sequence[int], median: list[float], budget: float) -> list[int]:
    """Grow the axes furthest below the median by one pooling step while the volume fits the budget and
    no axis exceeds the median rounded up to its step."""
    sizes = list(sizes)
    while True:
        candidates = []
        for i, (s, p) in enumerate(zip(sizes, pools, strict=True)):
            step = 2**p
            cap = math.ceil(median[i] / step) * step
            grown = sizes[:i] + [s + step] + sizes[i + 1 :]
            if s + step <= cap and math.prod(grown) <= budget:
                candidates.append((s / median[i], i, step))
        if not candidates:
            return sizes
        _, i, step = min(candidates)
        sizes[i] += step


def _shrink(sizes: list[int], pools: Sequence[int], median: list[float], budget: float) -> list[int]:
    """Rounding up may overshoot the budget: take a pooling step off the axis furthest above its share."""
    sizes = list(sizes)
    while math.prod(sizes) > budget:
        options = [(s / median[i], i) for i, s in enumerate(sizes) if s - 2 ** pools[i] >= 2 ** pools[i]]
        if not options:
            return sizes
        _, i = max(options)
        sizes[i] -= 2 ** pools[i]
    return sizes


def _round_to(value: float, step: int) -> int:
    return int(round(value / step)) * step


def _clip(value: int, low: int, high: int) -> int:
    return max(low, min(high, value))

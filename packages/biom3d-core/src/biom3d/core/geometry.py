"""Patch geometry every component shares: pooling kernels from poolings per axis, the rotation plane of a
patch, the enlarged patch that survives rotation (the Biom3d paper, Methods) and the value patches are padded with
past a volume's edge. Pure Python at import: networks, datasets and auto-configuration of any plugin agree on these
rules by importing them from here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

ANISOTROPY = 3.0  # an axis > 3x another makes a patch anisotropic (paper, Data loading)


def pool_strides(num_pools: Sequence[int]) -> list[tuple[int, ...]]:
    """Per-stage pooling kernels: an axis with fewer poolings gets 1-strides split between the head
    (floor half) and the tail (ceil half) of the encoder. (3, 5, 5) -> (1,2,2), (2,2,2) x3, (1,2,2)."""
    depth = max(num_pools) if num_pools else 0
    columns = []
    for p in num_pools:
        ones = depth - p
        head = ones // 2
        columns.append([1] * head + [2] * p + [1] * (ones - head))
    return [tuple(col[i] for col in columns) for i in range(depth)]


def rotation_plane(patch_size: Sequence[int]) -> tuple[int, ...]:
    """Axes the data augmentation rotates within (the original biom3d's rule). Isotropic-ish patches rotate
    in 3D (all axes); an anisotropic patch (an axis > 3x the smallest) rotates only about its smallest axis
    (the first one on a tie), so a thin z-stack is never mixed with its in-plane axes."""
    n = len(patch_size)
    if n < 3 or max(patch_size) <= ANISOTROPY * min(patch_size):
        return tuple(range(n))
    smallest = min(range(n), key=lambda a: patch_size[a])
    return tuple(a for a in range(n) if a != smallest)


def aug_patch_size(patch_size: Sequence[int]) -> tuple[int, ...]:
    """The enlarged crop that a rotation within ``rotation_plane`` leaves the patch inside: rotated axes get
    the diagonal of the rotated sub-box, rounded to the nearest voxel as the original's ``get_aug_patch`` does
    (its dataset then crops the centre back to the patch), the others keep their size."""
    plane = rotation_plane(patch_size)
    diagonal = round(math.sqrt(sum(patch_size[a] ** 2 for a in plane)))
    return tuple(diagonal if a in plane else int(s) for a, s in enumerate(patch_size))


#: voxels per channel read to find a volume's background; larger volumes are read one slice in k
BACKGROUND_BUDGET = 2**26


def background_value(image: np.ndarray, budget: int = BACKGROUND_BUDGET) -> np.ndarray:
    """Per-channel minimum of a (C, *spatial) array: what a patch past the volume's edge is padded with. A
    memory-mapped volume is read from disk (about 0.1-0.3 s per 256 MiB cold, 20 ms cached); beyond ``budget``
    voxels per channel only every k-th slice of its longest axis is read, whose minimum is as good a background
    value. Returns an array of the image's dtype."""
    import numpy as np

    spatial = image.shape[1:]
    step = math.ceil(math.prod(spatial) / budget)
    sample = image
    if step > 1:
        axis = int(np.argmax(spatial))
        index = [slice(None)] * image.ndim
        index[axis + 1] = slice(None, None, min(step, spatial[axis]))
        sample = image[tuple(index)]
    return np.asarray(sample.min(axis=tuple(range(1, image.ndim))), dtype=image.dtype)

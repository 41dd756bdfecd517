"""Helpers of the biom3d-monai tests: tiny preprocessed folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from biom3d.core.folds import write_folds


def write_preprocessed(root: Path, *, n: int = 3, size: int = 24, multilabel: bool = False, seed: int = 0) -> list[str]:
    """A biom3d preprocessed folder: ``n`` volumes of ``size``^3 with a tiny object of class 1 and two voxels of
    class 2 each; the first volume is fold 0 (validation), the others fold 1. One volume sits in a sub-folder."""
    rng = np.random.default_rng(seed)
    names = []
    for i in range(n):
        name = f"sub/case{i}.npy" if i == n - 1 else f"case{i}.npy"
        labels = np.zeros((size,) * 3, np.uint8)
        c = rng.integers(4, size - 4, 3)
        labels[c[0] - 1 : c[0] + 1, c[1] - 1 : c[1] + 1, c[2] - 1 : c[2] + 1] = 1
        labels[2, 2, 2:4] = 2
        image = rng.normal(size=(1, size, size, size)).astype(np.float32)
        image[0][labels > 0] += 3
        mask = np.stack([labels == 1, labels == 2]).astype(np.uint8) if multilabel else labels
        for sub, array in (("images", image), ("masks", mask)):
            path = root / sub / name
            path.parent.mkdir(parents=True, exist_ok=True)
            np.save(path, array)
        fg = root / "fg" / Path(name).with_suffix(".npz")
        fg.parent.mkdir(parents=True, exist_ok=True)
        np.savez(fg, **{str(k): np.argwhere(labels == k).astype(np.int32) for k in (1, 2)})
        names.append(name)
    write_folds(root / "folds.csv", {name: 0 if j == 0 else 1 for j, name in enumerate(names)})
    return names

"""``monai-dataset``: biom3d's SegmentationData over the preprocessed folder, sampled with MONAI transforms.

Layout read (``ctx.data_dir``, written by ``biom3d preprocess``)::

    images/<name>.npy  float32 (C, D, H, W)       masks/<name>.npy  (D, H, W) labels, or (K, D, H, W) multi-label
    fg/<name>.npz      "1".."K": int32 (N, 3)     folds.csv         filename,fold  (ctx.folds_path)

Arrays are opened memory-mapped for every item, so workers share the page cache and only cropped windows
are read. The foreground coordinates become the crop centres of positive patches (a class drawn uniformly
among those present, then a voxel); negative patches are centred on a uniformly drawn voxel.

Patches stay inside the volume on every axis the volume covers. Where a volume is smaller than the patch, the
image is padded with its background, the per-channel minimum (computed once per case and process, and only
when a crop leaves the volume: zero is the z-scored *mean* and would look like tissue), the mask with 0.
Validation items carry ``"valid"``: bool ``(1, *patch)``, False on that padding, so validation can measure
the image only.

Reproducibility: every item draws from its own RNG, seeded from ``ctx.seed`` and

- validation: the item index only, so every validation round sees the same patches;
- training: the item index, how many times this dataset object has served that index (an epoch counter
  that survives persistent workers), and, inside a DataLoader worker, the loader's base seed
  (``get_worker_info().seed - id``; PyTorch draws it from the seeded torch RNG each epoch). Results do not
  depend on the number of workers, and the main process (``workers: 0``) reproduces the same run for a seed.

The MONAI chain gets that RNG through ``Compose.set_random_state`` before each item.
"""

from __future__ import annotations

import math
import secrets
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, get_worker_info

from biom3d.core.errors import DataError
from biom3d.core.folds import read_folds
from biom3d.core.geometry import aug_patch_size, background_value, rotation_plane
from biom3d.monai.dataparams import MonaiDatasetParams
from biom3d.monai.transforms import BG, FG, PAD, VALID, train_transforms, val_transforms

MAX_SEED = 2**31 - 1


def build_dataset(params: MonaiDatasetParams, ctx: Any) -> MonaiSegmentationData:
    return MonaiSegmentationData(params, ctx)


@dataclass(frozen=True)
class Case:
    """One preprocessed image: its arrays and its foreground coordinates."""

    name: str
    image: Path
    mask: Path
    fg: Path


class MonaiSegmentationData:
    """The ``dataset`` kind's factory result: ``train_dataset(length)`` and ``val_dataset(length)``."""

    def __init__(self, params: MonaiDatasetParams, ctx: Any):
        data_dir = getattr(ctx, "data_dir", None)
        if data_dir is None:
            raise DataError("monai-dataset needs the preprocessed folder: set data.preprocessed in the config")
        self.data_dir = Path(data_dir)
        patch = params.patch_size or getattr(ctx, "patch_size", None)
        if not patch:
            raise DataError("monai-dataset needs a patch size: set patch_size (or run `biom3d preprocess` first)")
        self.params = params
        self.patch = tuple(int(p) for p in patch)
        self.multilabel = bool(getattr(ctx, "multilabel", False))
        self.seed = int(ctx.seed) if getattr(ctx, "seed", None) is not None else secrets.randbits(31)
        self.crop = self._crop_size(getattr(ctx, "aug_patch_size", None))
        folds_path = Path(getattr(ctx, "folds_path", None) or self.data_dir / "folds.csv")
        self.fold = int(getattr(ctx, "fold", 0))
        train, val = read_folds(folds_path, self.fold)
        self.train_cases = [self._case(n) for n in train]
        self.val_cases = [self._case(n) for n in val]

    def train_dataset(self, length: int) -> PatchDataset:
        transform = train_transforms(self.patch, self.crop, rotation_plane(self.patch), self.params)
        return PatchDataset(self._need(self.train_cases, "training"), length, transform, self, training=True)

    def val_dataset(self, length: int) -> PatchDataset:
        transform = val_transforms(self.patch, self.params)
        return PatchDataset(self._need(self.val_cases, "validation"), length, transform, self, training=False)

    def _crop_size(self, aug: Any) -> tuple[int, ...]:
        """Training crop: the enlarged box when rotations or scalings may happen, else the patch."""
        p = self.params
        if not (p.augment and p.affine_prob > 0 and (p.rotate_degrees > 0 or p.scale_range > 0)):
            return self.patch
        if aug and len(aug) == len(self.patch) and all(a >= s for a, s in zip(aug, self.patch, strict=True)):
            return tuple(int(a) for a in aug)
        return tuple(aug_patch_size(self.patch))

    def _case(self, filename: str) -> Case:
        image = self.data_dir / "images" / filename
        mask = self.data_dir / "masks" / filename
        for path in (image, mask):
            if not path.is_file():
                raise DataError(f"{path} is listed in the folds file but does not exist; re-run `biom3d preprocess`")
        return Case(filename, image, mask, (self.data_dir / "fg" / filename).with_suffix(".npz"))

    def _need(self, cases: list[Case], what: str) -> list[Case]:
        if not cases:
            raise DataError(f"fold {self.fold} leaves no {what} images in {self.data_dir}; check folds.csv")
        return cases


class PatchDataset(Dataset):
    """``length`` patch items drawn from ``cases``; see the module docstring for how items are seeded."""

    def __init__(self, cases: list[Case], length: int, transform: Any, data: MonaiSegmentationData, *, training: bool):
        self.cases = cases
        self.length = int(length)
        self.transform = transform
        self.seed = data.seed
        self.patch = data.patch
        self.multilabel = data.multilabel
        self.training = training
        self._draws: Counter[int] = Counter()
        self._fg: dict[tuple[str, tuple[int, ...]], list[np.ndarray]] = {}
        self._background: dict[str, np.ndarray] = {}

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not 0 <= index < self.length:
            raise IndexError(index)
        rng = np.random.default_rng(self._seed_sequence(index))
        case = self.cases[int(rng.integers(len(self.cases)))] if self.training else self.cases[index % len(self.cases)]
        image = np.load(case.image, mmap_mode="r")
        mask = np.load(case.mask, mmap_mode="r")
        label_map = mask.ndim == image.ndim - 1
        if label_map:
            mask = mask[None]
        padded = tuple(max(s, p) for s, p in zip(image.shape[1:], self.patch, strict=True))
        bg = rng.integers(0, math.prod(padded), size=1)
        fg = self._foreground(case, mask, label_map, padded, rng)
        data = {"image": image, "mask": mask, FG: fg if fg.size else bg, BG: bg,
                PAD: lambda: self._pad_value(case, image)}
        if not self.training:  # a broadcast view; MONAI's crop copies it whole (~1 ms per 8 M voxels)
            data[VALID] = np.broadcast_to(np.ones((1,) * image.ndim, dtype=bool), (1, *image.shape[1:]))
        self.transform.set_random_state(seed=int(rng.integers(MAX_SEED)))
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            out = self.transform(data)
        item = out[0] if isinstance(out, list) else out
        result = {"image": _plain(item["image"]).float(), "mask": self._mask(_plain(item["mask"]))}
        if not self.training:
            result["valid"] = _plain(item[VALID]).bool()
        return result

    def _pad_value(self, case: Case, image: np.ndarray) -> np.ndarray:
        if case.name not in self._background:
            self._background[case.name] = background_value(image)
        return self._background[case.name]

    def _seed_sequence(self, index: int) -> np.random.SeedSequence:
        if not self.training:
            return np.random.SeedSequence([self.seed, 1, index])
        info = get_worker_info()
        stream = (info.seed - info.id) % 2**63 if info is not None else 0
        draw = self._draws[index]
        self._draws[index] += 1
        return np.random.SeedSequence([self.seed, 0, stream, draw, index])

    def _foreground(
        self, case: Case, mask: np.ndarray, label_map: bool, padded: tuple[int, ...], rng: np.random.Generator
    ) -> np.ndarray:
        """Flat indices (in the padded volume) of the foreground voxels of one class drawn among those present."""
        key = (case.name, padded)
        per_class = self._fg.get(key)
        if per_class is None:
            coords = _read_fg(case, mask, label_map)
            per_class = [np.ravel_multi_index(c.T, padded) for c in coords if len(c)]
            self._fg[key] = per_class
        if not per_class:
            return np.empty(0, dtype=np.int64)
        return per_class[int(rng.integers(len(per_class)))]

    def _mask(self, mask: torch.Tensor) -> torch.Tensor:
        """(K, *patch) float32 for multi-label runs, else the (*patch) int64 label map."""
        if self.multilabel:
            return mask.round().float()
        if mask.shape[0] != 1:
            raise DataError(f"a {mask.shape[0]}-channel mask in a label-map run: set multilabel: true in the config")
        return mask[0].round().long()


def _read_fg(case: Case, mask: np.ndarray, label_map: bool) -> list[np.ndarray]:
    """Per-class (N, 3) foreground coordinates: ``fg/<name>.npz`` as preprocessing wrote it, or, missing that,
    found in the mask (slow on big volumes, done once per case and process)."""
    if case.fg.is_file():
        with np.load(case.fg) as npz:
            keys = sorted((k for k in npz.files if k.isdigit()), key=int)
            return [np.asarray(npz[k], dtype=np.int64).reshape(-1, 3) for k in keys]
    if label_map:
        labels = np.asarray(mask[0])
        return [np.argwhere(labels == k) for k in range(1, int(labels.max()) + 1)]
    return [np.argwhere(np.asarray(channel) > 0) for channel in mask]


def _plain(value: Any) -> torch.Tensor:
    """A plain tensor (MONAI's MetaTensor would drag its metadata through collation)."""
    tensor = torch.as_tensor(value)
    return tensor.as_tensor() if hasattr(tensor, "as_tensor") else tensor

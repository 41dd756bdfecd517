"""The default dataset (``io/patch-dataset``): patches from the preprocessed folder, memory-mapped, with
foreground oversampling, a rotation-aware enlarged crop and TorchIO augmentations.

Sampling (what to crop) and augmenting (what to do with the crop) are separate classes, so an augmenter can
later run on whole batches on the GPU while workers only crop.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from biom3d.core.errors import DataError
from biom3d.core.folds import read_folds
from biom3d.core.geometry import ANISOTROPY, rotation_plane


def build_patch_data(params, ctx) -> PatchData:
    return PatchData(params, ctx)


class PatchData:
    """SegmentationData over ``ctx.data_dir``: training and validation patch datasets of a fold."""

    def __init__(self, params, ctx):
        if ctx.data_dir is None or ctx.folds_path is None or ctx.patch_size is None:
            raise DataError("the dataset needs data.preprocessed and patch_size: train the config `biom3d preprocess` wrote")
        self.params, self.ctx = params, ctx
        self.train_names, self.val_names = read_folds(Path(ctx.folds_path), ctx.fold)
        if not self.train_names:
            raise DataError(f"fold {ctx.fold} leaves no training image in {ctx.folds_path}")
        self.store = VolumeStore(Path(ctx.data_dir), preload=params.preload)
        self.patch = tuple(ctx.patch_size)
        self.augmenter = Augmenter(params, self.patch, ctx.multilabel) if params.augment else None
        # the enlarged crop that rotations need; only cropped when a rotation is drawn
        self.rot_crop = tuple(ctx.aug_patch_size or self.patch)

    def train_dataset(self, length: int) -> PatchDataset:
        return PatchDataset(self.store, self.train_names, length, self.patch, self.rot_crop, self.params.fg_rate,
                            self.augmenter, multilabel=self.ctx.multilabel, seed=None)

    def val_dataset(self, length: int) -> PatchDataset:
        names = self.val_names or self.train_names
        return PatchDataset(self.store, names, length, self.patch, self.patch, self.params.fg_rate, None,
                            multilabel=self.ctx.multilabel, seed=self.ctx.seed or 0)


class VolumeStore:
    """Memory-mapped preprocessed volumes and foreground locations, opened once per process."""

    def __init__(self, root: Path, *, preload: bool = False):
        self.root, self.preload = root, preload
        self._cache: dict[str, tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]] = {}
        self._pid = os.getpid()

    def get(self, name: str) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        if os.getpid() != self._pid:  # a forked worker: reopen, don't share file handles
            self._cache, self._pid = {}, os.getpid()
        if name not in self._cache:
            stem = name[:-4] if name.endswith(".npy") else name
            mode = None if self.preload else "r"
            try:
                image = np.load(self.root / "images" / f"{stem}.npy", mmap_mode=mode)
                mask = np.load(self.root / "masks" / f"{stem}.npy", mmap_mode=mode)
                with np.load(self.root / "fg" / f"{stem}.npz") as fg:
                    locations = {k: fg[k] for k in fg.files}
            except FileNotFoundError as exc:
                raise DataError(f"{exc.filename} is missing: re-run `biom3d preprocess` for {self.root}") from exc
            self._cache[name] = (image, mask, locations)
        return self._cache[name]


class PatchDataset(torch.utils.data.Dataset):
    """``length`` patches. Training draws from torch's RNG (seeded per worker by the DataLoader);
    validation (``seed`` given) draws item ``i`` from its own generator, so it is the same every epoch."""

    def __init__(self, store: VolumeStore, names: Sequence[str], length: int, patch: Sequence[int],
                 rot_crop: Sequence[int], fg_rate: float, augmenter, *, multilabel: bool, seed: int | None):
        self.store, self.names, self.length = store, list(names), length
        self.patch, self.rot_crop, self.fg_rate = tuple(patch), tuple(rot_crop), fg_rate
        self.augmenter, self.multilabel, self.seed = augmenter, multilabel, seed

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        gen = None
        if self.seed is not None:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        name = self.names[index % len(self.names)] if gen is not None else \
            self.names[int(torch.randint(len(self.names), (1,)))]
        image, mask, fg = self.store.get(name)
        foreground = math.floor((index + 1) * self.fg_rate) > math.floor(index * self.fg_rate)
        rotate = self.augmenter is not None and self.augmenter.draw_affine()
        crop = self.rot_crop if rotate else self.patch
        start = self._start(image.shape[1:], crop, fg if foreground else None, gen)
        img = torch.from_numpy(crop_pad(image, start, crop, channel_first=True))
        msk = torch.from_numpy(crop_pad(mask, start, crop, channel_first=mask.ndim == 4))
        if self.augmenter is not None:
            img, msk = self.augmenter(img, msk, affine=rotate)
        if self.multilabel:
            return {"image": img.float(), "mask": msk.float()}
        return {"image": img.float(), "mask": msk.long()}

    def _start(self, shape: Sequence[int], crop: Sequence[int], fg: dict[str, np.ndarray] | None, gen) -> list[int]:
        classes = [k for k, v in (fg or {}).items() if len(v)]
        if classes:
            locs = fg[classes[int(torch.randint(len(classes), (1,), generator=gen))]]
            center = locs[int(torch.randint(len(locs), (1,), generator=gen))]
            return [int(c) - s // 2 for c, s in zip(center, crop, strict=True)]
        start = []
        for size, side in zip(shape, crop, strict=True):
            low, high = min(0, size - side), max(0, size - side)
            start.append(low + int(torch.randint(high - low + 1, (1,), generator=gen)))
        return start


def crop_pad(array: np.ndarray, start: Sequence[int], size: Sequence[int], *, channel_first: bool) -> np.ndarray:
    """The box ``[start, start + size)`` of ``array``'s spatial axes, zero-padded where it leaves the volume.
    Only the box is read, so memory-mapped volumes stay on disk."""
    spatial = array.shape[1:] if channel_first else array.shape
    src, dst = [], []
    for s, n, dim in zip(start, size, spatial, strict=True):
        lo = min(max(s, 0), dim)
        hi = max(min(s + n, dim), lo)  # an empty range when the box misses this axis entirely
        src.append(slice(lo, hi))
        dst.append(slice(lo - s, lo - s + (hi - lo)))
    lead = (slice(None),) if channel_first else ()
    out_shape = ((array.shape[0],) if channel_first else ()) + tuple(size)
    out = np.zeros(out_shape, dtype=array.dtype)
    out[lead + tuple(dst)] = array[lead + tuple(src)]
    return out


class Augmenter:
    """TorchIO augmentations; rotation and anisotropy axes follow the patch's anisotropy (the paper's rule).

    The affine transform is drawn first: only then is the enlarged crop needed, rotated and cropped back to
    the patch; every other transform runs at patch size, which keeps a 128^3 pipeline several times faster.
    """

    def __init__(self, params, patch: Sequence[int], multilabel: bool):
        import torchio as tio

        plane = rotation_plane(patch)
        degrees = params.rotation_degrees
        if degrees is None:
            degrees = 30.0 if len(plane) == 3 else 180.0
        axis = next((a for a in range(3) if a not in plane), None)
        rot = tuple(v for a in range(3) for v in ((-degrees, degrees) if (axis is None or a == axis) else (0.0, 0.0)))
        small = min(patch)
        aniso_axes = tuple(a for a in range(3) if patch[a] > ANISOTROPY * small) or (0, 1, 2)
        swap = tuple(max(1, s // 8) for s in patch)
        flip_axes = tuple(a for a in range(3) if patch[a] > 1)  # 2D data: a 1-voxel axis has nothing to flip
        self.p_affine, self.multilabel, self.tio = params.p_affine, multilabel, tio
        self.affine = tio.Compose([
            tio.RandomAffine(scales=params.scales, degrees=rot, translation=0),
            tio.CropOrPad(tuple(patch)),
        ])
        self.transform = tio.Compose([
            tio.RandomAnisotropy(axes=aniso_axes, downsampling=(1.5, 4), p=params.p_anisotropy),
            tio.RandomFlip(axes=flip_axes, flip_probability=params.p_flip),
            tio.RandomBiasField(coefficients=0.2, p=params.p_bias),
            tio.RandomBlur(std=(0.5, 1.0), p=params.p_blur),
            tio.RandomNoise(std=(0, 0.1), p=params.p_noise),
            tio.RandomSwap(patch_size=swap, num_iterations=10, p=params.p_swap),
            tio.RandomGamma(log_gamma=(-0.3, 0.3), p=params.p_gamma),
        ])

    def draw_affine(self) -> bool:
        return bool(torch.rand(()) < self.p_affine)

    def __call__(self, image: torch.Tensor, mask: torch.Tensor, *, affine: bool) -> tuple[torch.Tensor, torch.Tensor]:
        tio = self.tio
        label = mask if mask.ndim == 4 else mask[None]
        subject = tio.Subject(image=tio.ScalarImage(tensor=image), mask=tio.LabelMap(tensor=label))
        if affine:
            subject = self.affine(subject)
        out = self.transform(subject)
        result = out["mask"].data
        return out["image"].data, (result if self.multilabel else result[0])

"""The default dataset (``io/patch-dataset``): patches from the preprocessed folder, memory-mapped, with
foreground oversampling, a rotation-aware enlarged crop and the original biom3d's TorchIO augmentations.

Sampling (what to crop) and augmenting (what to do with the crop) are separate classes: ``io/batch-augment``
(batch_augment.py) reuses the sampling, and augments whole batches on the training device while workers only crop.

By default a patch is placed as the original places it (``crop: centred``): centred on its drawn voxel, cut off
by the volume's border, the part inside put in the middle of the patch and the rest padded with zero (``pad:
zero``, the z-scored mean, as the original and the predictor's tiles). ``crop: inside`` keeps the patch box in the
volume on every axis where the volume is at least as large as the patch, and ``pad: minimum`` pads with the
volume's per-channel minimum (its background; zero, the mean, looks like tissue). A rotation reads the patch box
grown on both sides to ``aug_patch_size``, the drawn voxel staying at its centre, so the rotation rarely turns it
out of the patch. (Keeping the enlarged box itself inside the volume would push the voxel off-centre: with
foreground spread uniformly, a rotated 64^3 patch of a 128^3 volume would then lose it about 70% of the time,
against 5% so.) Validation items carry ``"valid"``, a bool ``(1, *patch)`` tensor that is False on padding, so
validation measures the image only.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from biom3d.core.errors import DataError
from biom3d.core.folds import read_folds
from biom3d.core.geometry import ANISOTROPY, background_value, rotation_plane

#: order of the bias field's polynomial (TorchIO's default, as the original)
BIAS_ORDER = 3


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
        # the enlarged crop that rotations need; only cropped when a rotation is drawn
        self.rot_crop = tuple(max(int(r), p) for r, p in zip(ctx.aug_patch_size or self.patch, self.patch, strict=True))
        self.augmenter = self._augmenter() if params.augment else None

    def train_dataset(self, length: int) -> PatchDataset:
        return PatchDataset(self.store, self.train_names, length, self.patch, self.rot_crop, self._sampler(),
                            self.augmenter, multilabel=self.ctx.multilabel, seed=None, **self.border())

    def val_dataset(self, length: int) -> PatchDataset:
        names = self.val_names or self.train_names
        return PatchDataset(self.store, names, length, self.patch, self.patch, self._sampler(), None,
                            multilabel=self.ctx.multilabel, seed=self.ctx.seed or 0, **self.border())

    def border(self) -> dict[str, bool]:
        """How patches meet the volume's border (``crop``, ``pad``), as PatchDataset's keywords."""
        return {"centred": self.params.crop == "centred", "zero_pad": self.params.pad == "zero"}

    def _sampler(self) -> ForegroundRule:
        return ForegroundRule(self.params.fg_rate, self.ctx.batch_size)

    def _augmenter(self):
        return Augmenter(self.params, self.patch, self.rot_crop, self.ctx.multilabel)


class ForegroundRule:
    """Which items are centred on foreground: the last ``B - round(B * (1 - fg_rate))`` of every batch of ``B``
    (the original's ``_do_fg``), read from the item's position in its batch (the trainer's loader is sequential).
    Batch 2 at the default 0.33 gives one foreground patch per batch."""

    def __init__(self, fg_rate: float, batch_size: int):
        self.batch_size = max(int(batch_size), 1)
        self.first = round(self.batch_size * (1 - fg_rate))

    def __call__(self, index: int) -> bool:
        return index % self.batch_size >= self.first


class VolumeStore:
    """Memory-mapped preprocessed volumes, foreground locations and background values, opened once per process."""

    def __init__(self, root: Path, *, preload: bool = False):
        self.root, self.preload = root, preload
        self._cache: dict[str, tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]] = {}
        self._background: dict[str, np.ndarray] = {}
        self._pid = os.getpid()

    def get(self, name: str) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        if os.getpid() != self._pid:  # a forked worker: reopen, don't share file handles
            self._cache, self._background, self._pid = {}, {}, os.getpid()
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

    def background(self, name: str) -> np.ndarray:
        """The image's per-channel padding value, computed the first time a crop of it needs padding."""
        image = self.get(name)[0]
        if name not in self._background:
            self._background[name] = background_value(image)
        return self._background[name]


class PatchDataset(torch.utils.data.Dataset):
    """``length`` patches. Training draws from torch's RNG (seeded per worker by the DataLoader);
    validation (``seed`` given) draws item ``i`` from its own generator, so it is the same every epoch, and
    marks in ``"valid"`` which voxels of the item lie in the volume."""

    def __init__(self, store: VolumeStore, names: Sequence[str], length: int, patch: Sequence[int],
                 rot_crop: Sequence[int], foreground: ForegroundRule, augmenter, *, multilabel: bool, seed: int | None,
                 centred: bool, zero_pad: bool):
        self.store, self.names, self.length = store, list(names), length
        self.patch, self.rot_crop, self.foreground = tuple(patch), tuple(rot_crop), foreground
        self.augmenter, self.multilabel, self.seed = augmenter, multilabel, seed
        self.centred, self.zero_pad = centred, zero_pad

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        gen = None
        if self.seed is not None:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        name, start = self.locate(index, gen)
        rotate = self.augmenter is not None and self.augmenter.draw_rotation()
        img, msk = self.read(name, start, self.rot_crop if rotate else self.patch)
        if self.augmenter is not None:
            img, msk = self.augmenter(img, msk, rotate=rotate)
        item = {"image": img.float(), "mask": msk.float() if self.multilabel else msk.long()}
        if self.seed is not None:
            item["valid"] = torch.from_numpy(valid_mask(start, self.patch, self.store.get(name)[0].shape[1:],
                                                        centred=self.centred))
        return item

    def locate(self, index: int, gen: torch.Generator | None) -> tuple[str, list[int]]:
        """Item ``index``'s volume and the first voxel of its patch box (foreground-centred per the rule)."""
        name = self.names[index % len(self.names)] if gen is not None else \
            self.names[int(torch.randint(len(self.names), (1,)))]
        image, _, fg = self.store.get(name)
        return name, crop_start(image.shape[1:], self.patch, fg if self.foreground(index) else None, gen,
                                inside=not self.centred)

    def read(self, name: str, start: Sequence[int], size: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """The patch box at ``start`` grown on both sides to ``size`` (a rotation's enlarged crop, whose centre
        crop is the patch box again), padded where it leaves the volume."""
        image, mask, _ = self.store.get(name)
        box = [s - (n - p) // 2 for s, n, p in zip(start, size, self.patch, strict=True)]
        inside = box_inside(box, size, image.shape[1:])
        pad = 0 if inside or self.zero_pad else self.store.background(name)
        img = crop_pad(image, box, size, channel_first=True, value=pad, centred=self.centred)
        return torch.from_numpy(img), torch.from_numpy(crop_pad(mask, box, size, channel_first=mask.ndim == 4,
                                                                centred=self.centred))


def crop_start(shape: Sequence[int], crop: Sequence[int], fg: dict[str, np.ndarray] | None, gen, *,
               inside: bool = False) -> list[int]:
    """A crop's first voxel: centred on a voxel of a class drawn among those present (``fg`` given), else on any
    voxel (the original's ``random_crop(force_in=False)``), the crop then passing the border where the voxel is
    near it; ``inside``: clamped so the crop stays inside the volume on every axis the volume covers (drawn
    uniformly among those starts without ``fg``), and holds the whole volume on the others."""
    classes = [k for k, v in (fg or {}).items() if len(v)]
    if classes:
        locs = fg[classes[int(torch.randint(len(classes), (1,), generator=gen))]]
        center = locs[int(torch.randint(len(locs), (1,), generator=gen))]
        if not inside:
            return [int(c) - s // 2 for c, s in zip(center, crop, strict=True)]
        return [min(max(int(c) - s // 2, min(0, n - s)), max(0, n - s))
                for c, s, n in zip(center, crop, shape, strict=True)]
    if not inside:
        return [int(torch.randint(n, (1,), generator=gen)) - s // 2 for s, n in zip(crop, shape, strict=True)]
    start = []
    for size, side in zip(shape, crop, strict=True):
        low, high = min(0, size - side), max(0, size - side)
        start.append(low + int(torch.randint(high - low + 1, (1,), generator=gen)))
    return start


def box_inside(start: Sequence[int], size: Sequence[int], spatial: Sequence[int]) -> bool:
    return all(s >= 0 and s + n <= dim for s, n, dim in zip(start, size, spatial, strict=True))


def _overlap(start: Sequence[int], size: Sequence[int], spatial: Sequence[int], *,
             centred: bool = False) -> tuple[list[slice], list[slice]]:
    """Slices of the box ``[start, start + size)`` inside the volume (``src``) and inside the crop (``dst``):
    where it lies in the box, or ``centred`` in the middle of the crop (the original's ``centered_pad`` of the
    cut-off crop: ``(size - kept) // 2`` padding before it)."""
    src, dst = [], []
    for s, n, dim in zip(start, size, spatial, strict=True):
        lo = min(max(s, 0), dim)
        hi = max(min(s + n, dim), lo)  # an empty range when the box misses this axis entirely
        src.append(slice(lo, hi))
        first = (n - (hi - lo)) // 2 if centred else lo - s
        dst.append(slice(first, first + (hi - lo)))
    return src, dst


def crop_pad(array: np.ndarray, start: Sequence[int], size: Sequence[int], *, channel_first: bool,
             value: float | np.ndarray = 0, centred: bool = False) -> np.ndarray:
    """The box ``[start, start + size)`` of ``array``'s spatial axes, padded with ``value`` (a scalar, or one per
    channel) where it leaves the volume, the part inside ``centred`` or not (:func:`_overlap`). Only the box is
    read, so memory-mapped volumes stay on disk."""
    spatial = array.shape[1:] if channel_first else array.shape
    src, dst = _overlap(start, size, spatial, centred=centred)
    lead = (slice(None),) if channel_first else ()
    out_shape = ((array.shape[0],) if channel_first else ()) + tuple(size)
    out = np.empty(out_shape, dtype=array.dtype)
    if not box_inside(start, size, spatial):
        fill = np.asarray(value, dtype=array.dtype)
        out[...] = fill.reshape(fill.shape + (1,) * len(size)) if channel_first and fill.ndim else fill
    out[lead + tuple(dst)] = array[lead + tuple(src)]
    return out


def valid_mask(start: Sequence[int], size: Sequence[int], spatial: Sequence[int], *, centred: bool = False) -> np.ndarray:
    """``(1, *size)`` bool: True on the voxels of the crop that lie in the volume."""
    out = np.zeros((1, *size), dtype=bool)
    out[(slice(None), *_overlap(start, size, spatial, centred=centred)[1])] = True
    return out


class Augmenter:
    """The original biom3d's TorchIO augmentations (SegPatchFast); axes follow the patch's anisotropy.

    The rotation is drawn first: only then is the enlarged crop read, rotated and centre-cropped back to the
    patch; every other transform runs at patch size, which keeps a 128^3 pipeline several times faster.
    """

    def __init__(self, params, patch: Sequence[int], rot_crop: Sequence[int], multilabel: bool):
        import torchio as tio

        patch = tuple(int(s) for s in patch)
        self.p_rotate, self.multilabel, self.tio = params.p_rotate, multilabel, tio
        lo = [(r - s) // 2 for r, s in zip(rot_crop, patch, strict=True)]  # the original's centre crop
        cropping = tuple(v for a in range(3) for v in (lo[a], rot_crop[a] - patch[a] - lo[a]))
        own = {"copy": False}  # the crops are fresh arrays: TorchIO's per-transform deep copies only cost time
        self.rotate = tio.Compose([
            tio.RandomAffine(scales=0, degrees=rotation_degrees(patch, params), translation=0,
                             default_pad_value=0 if params.pad == "zero" else "minimum", **own),
            tio.Crop(cropping, **own),
        ], **own)
        self.transform = tio.Compose([
            tio.RandomAffine(scales=tuple(params.scales), degrees=0, translation=0, p=params.p_scale, **own),
            tio.RandomAnisotropy(axes=anisotropy_axes(patch), downsampling=tuple(params.anisotropy_downsampling),
                                 p=params.p_anisotropy, **own),
            tio.RandomFlip(axes=flip_axes(patch), flip_probability=params.p_flip, **own),
            tio.RandomBiasField(coefficients=params.bias_coefficients, order=BIAS_ORDER, p=params.p_bias, **own),
            tio.RandomBlur(std=tuple(params.blur_std), p=params.p_blur, **own),
            tio.RandomNoise(std=tuple(params.noise_std), p=params.p_noise, **own),
            tio.RandomSwap(patch_size=swap_block(patch), num_iterations=params.swap_iterations, p=params.p_swap,
                           **own),
            tio.RandomGamma(log_gamma=tuple(params.log_gamma), p=params.p_gamma, **own),
        ], **own)

    def draw_rotation(self) -> bool:
        return bool(torch.rand(()) < self.p_rotate)

    def __call__(self, image: torch.Tensor, mask: torch.Tensor, *, rotate: bool) -> tuple[torch.Tensor, torch.Tensor]:
        tio = self.tio
        label = mask if mask.ndim == 4 else mask[None]
        subject = tio.Subject(image=tio.ScalarImage(tensor=image), mask=tio.LabelMap(tensor=label))
        if rotate:
            subject = self.rotate(subject)
        out = self.transform(subject)
        result = out["mask"].data
        return out["image"].data, (result if self.multilabel else result[0])


def rotation_degrees(patch: Sequence[int], params) -> tuple[float, ...]:
    """TorchIO's six rotation bounds: +/- ``rotation_degrees`` about every axis of an isotropic patch, or
    +/- ``rotation_degrees_anisotropic`` about the one axis outside core's ``rotation_plane``."""
    plane = rotation_plane(patch)
    if len(plane) == 3:
        return (-params.rotation_degrees, params.rotation_degrees) * 3
    d = params.rotation_degrees_anisotropic
    return tuple(v for a in range(3) for v in ((0.0, 0.0) if a in plane else (-d, d)))


def anisotropy_axes(patch: Sequence[int]) -> tuple[int, ...]:
    """Axes simulated anisotropy may pick: those > 3x the smallest, or any axis of an isotropic patch."""
    return tuple(a for a in range(3) if patch[a] > ANISOTROPY * min(patch)) or (0, 1, 2)


def flip_axes(patch: Sequence[int]) -> tuple[int, ...]:
    """Axes that flip; 2D data's 1-voxel axis has nothing to flip."""
    return tuple(a for a in range(3) if patch[a] > 1)


def swap_block(patch: Sequence[int]) -> tuple[int, ...]:
    """The blocks the swap exchanges: an eighth of the patch per axis."""
    return tuple(max(1, int(s) // 8) for s in patch)

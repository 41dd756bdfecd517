"""``io/batch-augment``: io/patch-dataset's sampling and augmentations, with the augmentations moved out of the
loader's workers onto whole batches on the training device.

On a GPU, augmenting one sample at a time with TorchIO on the CPU workers is what a training step waits for. Here
the workers only crop: the patch box (foreground-centred as io/patch-dataset) grown to ``aug_patch_size`` when
rotations are on, so that a rotated patch has real voxels in its corners. The trainer then calls
:meth:`BatchAugmentData.on_device` on each training batch once it is on the device, and the whole batch is
augmented there in a few batched tensor ops (:mod:`biom3d.io.batch_ops`): one grid and one ``grid_sample`` for
the rotated or scaled samples (rotation, scaling and flips composed into one matrix per sample, sampled directly
at patch size: the centre crop is free), nearest gathering for their labels, a (flipped) centre crop for the
others; then anisotropy, bias field, blur, noise, swap and gamma on the samples that drew them, in TorchIO's
order (flips commute with the anisotropy), with io/patch-dataset's probabilities and ranges.

Seeded per batch: batch ``k`` draws its parameters from ``seed * 1_000_003 + k`` (a CPU generator: a few hundred
numbers, so the device never waits for them), its noise from a generator on the batch's device seeded alike;
``seed`` is the run's (each rank's own under torchrun). The same seed gives the same batches. Validation batches
come from io/patch-dataset's validation dataset, unaugmented.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from biom3d.core import distributed
from biom3d.io import batch_ops
from biom3d.io.datasets import (
    BIAS_ORDER,
    PatchData,
    PatchDataset,
    anisotropy_axes,
    flip_axes,
    rotation_degrees,
    swap_block,
)

#: seeds of consecutive batches: ``seed * SEED_STRIDE + batch`` (io/patch-dataset's validation items alike)
SEED_STRIDE = 1_000_003
#: the noise generator's seed differs from the parameters' one, so that the two streams are not the same numbers
NOISE_SALT = 0x5EED


def build_batch_augment_data(params, ctx) -> BatchAugmentData:
    return BatchAugmentData(params, ctx)


class BatchAugmentData(PatchData):
    """SegmentationData whose training items are raw crops; :meth:`on_device` makes them training batches.

    Training items: ``{"image": float32 (C, *crop), "mask": uint8 (or int64) (*crop) / (K, *crop)}``, ``crop``
    being ``aug_patch_size`` when rotations are on, else the patch. Only a trainer that calls ``on_device`` (the
    core's seg-trainer does) can train on them; validation items are io/patch-dataset's."""

    def __init__(self, params, ctx):
        super().__init__(params, ctx)
        rotations = self.augmenter is not None and params.p_rotate > 0
        self.crop = self.rot_crop if rotations else self.patch

    def train_dataset(self, length: int) -> CropDataset:
        return CropDataset(self.store, self.train_names, length, self.patch, self.crop, self._sampler(), None,
                           multilabel=self.ctx.multilabel, seed=None)

    @torch.no_grad()
    def on_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A collated training batch of crops, on its device -> the augmented batch: image float32
        (B, C, *patch), mask int64 (B, *patch) or float32 (B, K, *patch) multi-label."""
        if self.augmenter is None:
            mask = batch["mask"]
            return {**batch, "mask": mask.float() if self.ctx.multilabel else mask.long()}
        if batch["image"].device.type != "cpu":
            return self.augmenter(batch)
        with _one_thread():
            return self.augmenter(batch)

    def _augmenter(self) -> BatchAugmenter:
        seed = distributed.rank_seed(self.ctx.seed, distributed.current().rank)  # under torchrun, each rank its own
        return BatchAugmenter(self.params, self.patch, multilabel=self.ctx.multilabel, seed=seed)


class CropDataset(PatchDataset):
    """Training crops only, ``rot_crop``-sized around each patch box; masks stay uint8 (a quarter of the bytes
    to move until the device; ``on_device`` makes them int64)."""

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        name, start = self.locate(index, None)
        image, mask = self.read(name, start, self.rot_crop)
        return {"image": image.float(), "mask": mask if mask.dtype == torch.uint8 else mask.long()}


@dataclass
class Draw:
    """One batch's parameters (CPU tensors, one row per sample); a flag says which samples a transform touches."""

    rotate: torch.Tensor
    angles: torch.Tensor  # (B, 3) radians, about axes 0, 1, 2
    scale: torch.Tensor
    scales: torch.Tensor  # (B, 3), > 1 zooms in
    aniso: torch.Tensor
    aniso_axis: torch.Tensor  # (B,) an index into anisotropy_axes
    aniso_factor: torch.Tensor
    flips: torch.Tensor  # (B, 3) bool
    bias: torch.Tensor
    bias_coefficients: torch.Tensor  # (B, terms)
    blur: torch.Tensor
    blur_std: torch.Tensor  # (B, 3) voxels
    noise: torch.Tensor
    noise_std: torch.Tensor
    swap: torch.Tensor
    swap_starts: torch.Tensor  # (B, iterations, 2, 3) first voxels of the block pairs
    gamma: torch.Tensor
    log_gamma: torch.Tensor  # (B, C)


class BatchAugmenter:
    """io/patch-dataset's TorchIO pipeline (:class:`biom3d.io.datasets.Augmenter`) applied to a whole batch."""

    def __init__(self, params, patch: Sequence[int], *, multilabel: bool, seed: int | None):
        self.params, self.patch, self.multilabel = params, tuple(int(s) for s in patch), multilabel
        self.degrees = torch.tensor(rotation_degrees(self.patch, params), dtype=torch.float64).view(3, 2)
        self.aniso_axes, self.flip_axes = anisotropy_axes(self.patch), flip_axes(self.patch)
        self.block = swap_block(self.patch)
        self.seed = int(torch.randint(2**40, ())) if seed is None else int(seed)
        self.batches = 0  # batches augmented so far: the next one's seed
        self._basis: dict[tuple, torch.Tensor] = {}

    def __call__(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        image, mask = batch["image"], batch["mask"]
        labels = mask if mask.ndim == image.ndim else mask[:, None]
        seed = (self.seed * SEED_STRIDE + self.batches) % 2**63  # any config seed, a valid generator seed
        self.batches += 1
        draw = self.draw(image.shape[0], image.shape[1], torch.Generator().manual_seed(seed))
        image, labels = self._spatial(image.float(), labels, draw)
        noise = torch.Generator(device=image.device).manual_seed(seed ^ NOISE_SALT)
        image = self._intensity(image, draw, noise)
        return {**batch, "image": image, "mask": labels if self.multilabel else labels[:, 0]}

    def draw(self, n: int, channels: int, gen: torch.Generator) -> Draw:
        """Every parameter of every sample, always in the same number of draws (the stream stays aligned)."""
        p = self.params

        def flag(prob: float) -> torch.Tensor:
            return torch.rand(n, generator=gen) < prob

        def uniform(low, high, *shape) -> torch.Tensor:
            low, high = torch.as_tensor(low, dtype=torch.float64), torch.as_tensor(high, dtype=torch.float64)
            return low + (high - low) * torch.rand(n, *shape, generator=gen, dtype=torch.float64)

        iterations, patch = p.swap_iterations, torch.tensor(self.patch)
        reach = (patch - torch.tensor(self.block)).clamp(min=0)  # TorchIO: randint(shape - block), 0 if none
        mask_axes = torch.zeros(3, dtype=torch.bool)
        mask_axes[list(self.flip_axes)] = True
        return Draw(
            rotate=flag(p.p_rotate), angles=uniform(*self.degrees.T.deg2rad(), 3),
            scale=flag(p.p_scale), scales=uniform(*p.scales, 3),
            aniso=flag(p.p_anisotropy),
            aniso_axis=torch.randint(len(self.aniso_axes), (n,), generator=gen),
            aniso_factor=uniform(*p.anisotropy_downsampling),
            flips=(torch.rand(n, 3, generator=gen) < p.p_flip) & mask_axes,
            bias=flag(p.p_bias),
            bias_coefficients=uniform(-p.bias_coefficients, p.bias_coefficients, batch_ops.bias_terms(BIAS_ORDER)),
            blur=flag(p.p_blur), blur_std=uniform(*p.blur_std, 3),
            noise=flag(p.p_noise), noise_std=uniform(*p.noise_std),
            swap=flag(p.p_swap),
            swap_starts=(torch.rand(n, iterations, 2, 3, generator=gen, dtype=torch.float64) * reach).long(),
            gamma=flag(p.p_gamma), log_gamma=uniform(*p.log_gamma, channels),
        )

    # -- spatial: one resampling for the rotated or scaled samples, a (flipped) centre crop for the others ------
    def _spatial(self, image: torch.Tensor, labels: torch.Tensor, d: Draw) -> tuple[torch.Tensor, torch.Tensor]:
        spatial, device = image.shape[2:], image.device
        low = [(s - p) // 2 for s, p in zip(spatial, self.patch, strict=True)]
        box = (slice(None), *(slice(lo, lo + p) for lo, p in zip(low, self.patch, strict=True)))
        out_image = image.new_empty((image.shape[0], image.shape[1], *self.patch))
        dtype = torch.float32 if self.multilabel else torch.int64  # converted while copied, not in a pass of its own
        out_labels = labels.new_empty((labels.shape[0], labels.shape[1], *self.patch), dtype=dtype)
        moved = d.rotate | d.scale
        for b in (~moved).nonzero().flatten().tolist():  # strided copies: cheaper than gathering a sub-batch
            dims = [1 + a for a in range(3) if d.flips[b, a]]
            out_image[b].copy_(image[b][box].flip(dims) if dims else image[b][box])
            out_labels[b].copy_(labels[b][box].flip(dims) if dims else labels[b][box])
        if moved.any():
            idx = moved.nonzero().flatten()
            keep = torch.ones_like(d.scales[idx])
            inverse_scale = 1 / torch.where(d.scale[idx, None], d.scales[idx], keep)
            mirror = torch.where(d.flips[idx], -keep, keep)  # a flip after the affine: output axis reversed
            matrix = rotation_matrices(d.angles[idx] * d.rotate[idx, None]) @ torch.diag_embed(inverse_scale * mirror)
            centre = [lo + (p - 1) / 2 for lo, p in zip(low, self.patch, strict=True)]
            batch_ops.affine_resample(image, labels, idx.to(device), matrix, centre, out_image, out_labels)
        return out_image, out_labels

    # -- intensity, in TorchIO's order (anisotropy is spatial there, but the labels keep still) ----------------------
    def _intensity(self, x: torch.Tensor, d: Draw, noise: torch.Generator) -> torch.Tensor:
        device = x.device
        for k, axis in enumerate(self.aniso_axes):
            chosen = d.aniso & (d.aniso_axis == k)
            if chosen.any():
                matrices = batch_ops.anisotropy_matrices(d.aniso_factor[chosen].float(), self.patch[axis]).to(device)
                x = _on(x, chosen, lambda sub, m=matrices, a=axis: batch_ops.along_axis(sub, m, a))
        if d.bias.any():
            coefficients = d.bias_coefficients[d.bias].to(device, torch.float32)
            basis = self._bias_basis(device)
            field = torch.exp(coefficients @ basis.view(len(basis), -1)).view(-1, 1, *self.patch)
            x = _on(x, d.bias, lambda sub: sub.mul_(field))
        if d.blur.any():
            stds = d.blur_std[d.blur].float()
            matrices = [batch_ops.gaussian_matrices(stds[:, a], self.patch[a]).to(device) for a in range(3)]
            x = _on(x, d.blur, lambda sub: _smooth(sub, matrices))
        if d.noise.any():
            std = d.noise_std[d.noise].to(device, torch.float32).view(-1, 1, 1, 1, 1)
            x = _on(x, d.noise, lambda sub: sub.add_(torch.randn(sub.shape, generator=noise, device=device) * std))
        if d.swap.any():
            x = _on(x, d.swap, lambda sub: batch_ops.swap_blocks(sub, d.swap_starts[d.swap], self.block))
        if d.gamma.any():
            gamma = d.log_gamma[d.gamma].exp().to(device, torch.float32)
            x = _on(x, d.gamma, lambda sub: batch_ops.signed_gamma(sub, gamma))
        return x

    def _bias_basis(self, device: torch.device) -> torch.Tensor:
        key = (str(device), self.patch)
        if key not in self._basis:
            self._basis[key] = batch_ops.bias_basis(self.patch, BIAS_ORDER, device)
        return self._basis[key]


@contextlib.contextmanager
def _one_thread():
    """Run on one intra-op thread. On a CPU the loader's workers share the cores with this process, and most of
    these ops are small or memory-bound: two threads spent more time waiting for each other than working (this
    2-core machine, its cores busy: 8.8 ms against 0.2 ms for one 64^3 multiply, 78 against 24 ms per 64^3
    sample for the whole batch)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _on(x: torch.Tensor, flags: torch.Tensor, fn) -> torch.Tensor:
    """``fn`` applied to the flagged samples of ``x`` (``fn`` may work in place on the sub-batch it gets)."""
    if not flags.any():
        return x
    if flags.all():
        return fn(x)
    idx = flags.nonzero().flatten().to(x.device)
    return x.index_copy_(0, idx, fn(x.index_select(0, idx)))


def _smooth(x: torch.Tensor, matrices: list[torch.Tensor]) -> torch.Tensor:
    for axis, m in enumerate(matrices):
        x = batch_ops.along_axis(x, m, axis)
    return x


def rotation_matrices(angles: torch.Tensor) -> torch.Tensor:
    """(n, 3, 3) float64: rotations by ``angles[:, a]`` about axis ``a``, composed R0 @ R1 @ R2."""
    out = torch.eye(3, dtype=torch.float64).repeat(len(angles), 1, 1)
    for axis in range(3):
        i, j = [a for a in range(3) if a != axis]
        cos, sin = angles[:, axis].cos(), angles[:, axis].sin()
        step = torch.eye(3, dtype=torch.float64).repeat(len(angles), 1, 1)
        step[:, i, i], step[:, i, j], step[:, j, i], step[:, j, j] = cos, -sin, sin, cos
        out = out @ step
    return out


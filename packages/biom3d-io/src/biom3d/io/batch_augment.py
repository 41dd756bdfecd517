"""``io/batch-augment``: io/patch-dataset's sampling and augmentations, with the augmentations moved out of the
loader's workers onto whole batches on the training device.

On a GPU, augmenting one sample at a time with TorchIO on the CPU workers is what a training step waits for. Here
the workers only crop: the patch box (foreground-centred as io/patch-dataset), grown to ``aug_patch_size`` for the
samples they draw a rotation for (``p_rotate``, from the worker's seeded RNG as io/patch-dataset does), so that a
rotated patch has real voxels in its corners while the others ship a patch's voxels only (at 64^3 the enlarged
crop is 5.3 patches: shipping it for every sample was most of a CPU batch's cost). :func:`CropCollate` keeps the
two sizes apart in a batch. The trainer then calls :meth:`BatchAugmentData.on_device` on each training batch once
it is on the device, and the whole batch is augmented there in a few batched tensor ops
(:mod:`biom3d.io.batch_ops`): one grid and one ``grid_sample`` for the rotated samples (rotation, scaling and
flips composed into one matrix per sample, sampled directly at patch size: the centre crop is free; on a CPU each
sample through ``grid_sample``'s 2D kernel, twice as fast as its 3D one there) with nearest gathering for their
labels, three 1D maps for the scaled-only ones (separable; on a GPU they join that ``grid_sample``), a (flipped)
centre crop for the others; then anisotropy, bias field, blur, noise, swap and gamma on the samples that drew them,
in TorchIO's order (flips commute with the anisotropy), with io/patch-dataset's probabilities and ranges. On a CPU
(``run_on`` auto or workers) the same augmenter runs in each loader worker right after collating instead, since
the training process is busy with the network.

Seeded per batch: a batch draws its parameters from a CPU generator seeded with the batch's seed (a few hundred
numbers, so the device never waits for them), its noise from a generator on the batch's device seeded alike. In
training the batch's seed comes from the process that augments it: the training process's RNG (``on_device``),
seeded from the run's seed (each rank's own under torchrun) and restored on resume, or a worker's RNG, which the
DataLoader seeds from the run's. The same seed gives the same batches. A standalone :class:`BatchAugmenter` numbers
its batches: batch ``k`` of seed ``s`` is ``s * 1_000_003 + k``. Validation batches come from io/patch-dataset's
validation dataset, unaugmented.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from biom3d.core import distributed
from biom3d.core.devices import keep_freed_memory
from biom3d.io import batch_ops, shared_batches
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
    """SegmentationData whose training batches are augmented as wholes, where ``run_on`` says.

    The loader's batches are :class:`CropBatch` objects that :meth:`on_device` makes training batches: augmented in
    the workers (``run_on`` workers; auto on a CPU with workers), ``image`` and the labels as read (uint8: 15-20%
    more batches/s at 64^3 than shipping int64); augmented on the device, raw crops (the ``S`` patch-sized ones
    and the ``R`` enlarged ones of the samples drawn for a rotation, apart). A trainer that never calls
    ``on_device`` gets an error naming the hook. Without augmentation (``augment: false``) the batches are
    ordinary ones. Validation items are io/patch-dataset's."""

    def __init__(self, params, ctx):
        super().__init__(params, ctx)
        self.in_workers = self.augmenter is not None and _in_workers(params, ctx)

    def train_dataset(self, length: int) -> CropDataset:
        p_rotate = self.params.p_rotate if self.augmenter is not None else 0.0
        collate = CropCollate(self.patch, self.rot_crop, self.augmenter if self.in_workers else None,
                              raw=self.augmenter is not None and not self.in_workers, multilabel=self.ctx.multilabel)
        return CropDataset(self.store, self.train_names, length, self.patch, self.rot_crop, self._sampler(), None,
                           multilabel=self.ctx.multilabel, seed=None, p_rotate=p_rotate, collate=collate,
                           **self.border())

    @torch.no_grad()
    def on_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A collated training batch, on its device -> the batch to train on: image float32 (B, C, *patch), mask
        int64 (B, *patch) or float32 (B, K, *patch) multi-label; from raw crops, the rotated samples last."""
        if self.augmenter is None:
            return batch
        device = (batch["image"] if self.in_workers else batch["crop_image"]).device
        with _one_thread() if device.type == "cpu" else contextlib.nullcontext():
            if self.in_workers:
                labels = batch["labels"]
                return {"image": batch["image"], "mask": labels.float() if self.ctx.multilabel else labels.long()}
            # the training process's RNG (seeded from the run's seed per rank, restored on resume): a resumed run
            # draws what the uninterrupted one would have, not the first epochs' batches again
            return self.augmenter(batch, seed=int(torch.randint(2**62, ())))

    def _augmenter(self) -> BatchAugmenter:
        # the numbering of standalone use (data.augmenter(batch)); training passes each batch's seed
        seed = distributed.rank_seed(self.ctx.seed, distributed.current().rank)
        return BatchAugmenter(self.params, self.patch, multilabel=self.ctx.multilabel, seed=seed,
                              keep_label_dtype=_in_workers(self.params, self.ctx))


def _in_workers(params, ctx) -> bool:
    """``run_on`` resolved: on a CPU the training process is busy with the network while the workers wait."""
    auto = torch.device(ctx.device).type == "cpu" and ctx.workers > 0
    return params.run_on == "workers" or (params.run_on == "auto" and auto)


class CropDataset(PatchDataset):
    """Training crops only: the patch box, or for a sample drawn for a rotation the box grown to ``rot_crop``
    (``"rotate"`` says which); masks stay uint8 (an eighth of the bytes to move). Batches go through
    :attr:`collate`."""

    def __init__(self, *args, p_rotate: float, collate: CropCollate, **kwargs):
        super().__init__(*args, **kwargs)
        self.p_rotate, self.collate = p_rotate, collate

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        name, start = self.locate(index, None)
        rotate = self.p_rotate > 0 and bool(torch.rand(()) < self.p_rotate)  # the worker's RNG, seeded per worker
        image, mask = self.read(name, start, self.rot_crop if rotate else self.patch)
        return {"image": image.float(), "mask": mask if mask.dtype == torch.uint8 else mask.long(),
                "rotate": torch.tensor(rotate)}


class CropBatch(dict):
    """A training batch for ``on_device``. Raw crops: ``crop_image`` float32 (S, C, *patch), ``crop_mask`` (S,
    *patch) or (S, K, *patch) as read (uint8 mostly), ``rot_image``/``rot_mask`` the same at ``aug_patch_size``,
    either possibly empty. Or augmented in a worker: ``image`` (B, C, *patch) and ``labels`` (the masks' dtype as
    read). A trainer reading ``image`` or ``mask`` off it never called the hook: it gets told so, not a partial
    batch or bytes as labels."""

    def __missing__(self, key):
        raise KeyError(f"{key!r}: io/batch-augment's training batches are finished by its on_device(batch); train "
                       "with a trainer that calls the dataset's on_device (core's seg-trainer does)")


class CropCollate:
    """A loader's ``collate_fn`` for :class:`CropDataset`. ``raw``: the crops as a :class:`CropBatch`, patch-sized
    and enlarged ones stacked apart. Else a training batch: augmented here by ``augmenter`` (``run_on`` workers)
    seeded from the worker's RNG (the DataLoader seeds each worker from the run's seed), or, with no augmenter,
    the crops as they are (all patch-sized: no rotation is drawn); training batches leave a worker through its
    reused shared buffers (:mod:`biom3d.io.shared_batches`). A class, not a closure, so that spawned workers can
    pickle it."""

    def __init__(self, patch: Sequence[int], rot_crop: Sequence[int], augmenter: BatchAugmenter | None, *, raw: bool,
                 multilabel: bool):
        self.patch, self.rot_crop, self.augmenter, self.raw = tuple(patch), tuple(rot_crop), augmenter, raw
        self.multilabel = multilabel

    def __call__(self, items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        # raw crops: default_collate stacks them straight into a worker's shared memory (their size varies with
        # the rotations drawn, and a ring's buffers would all grow to the largest batch: 3.9 GiB at 128^3, batch 8);
        # batches of one size: through this worker's reused shared buffers (shared_batches), as fresh shared pages
        # per batch cost the worker and the training process 1.5 ms per 64^3 sample, of the 12 a worker spends
        stack = torch.utils.data.default_collate if self.raw else torch.stack
        still = [it for it in items if not it["rotate"]]
        rotated = [it for it in items if it["rotate"]]
        crops = {**_stack(still, items[0], self.patch, "crop_", stack),
                 **_stack(rotated, items[0], self.rot_crop, "rot_", stack)}
        if self.raw:
            return CropBatch(crops)
        if self.augmenter is not None:
            _tune_worker_malloc()
            with _one_thread():
                out = self.augmenter(crops, seed=int(torch.randint(2**62, ())))
            return shared_batches.share({"image": out["image"], "labels": out["mask"]}, CropBatch)
        mask = crops["crop_mask"]
        mask = mask.float() if self.multilabel else mask.long()
        return shared_batches.share({"image": crops["crop_image"], "mask": mask})


_TUNED_PID: int | None = None


def _tune_worker_malloc() -> None:
    """In a loader's worker that augments, once: glibc keeps its freed blocks (the same few MiB every batch) instead
    of faulting them in anew, 1 of the 12 ms a 64^3 sample costs it, 20 of the 90 at 128^3. Not in the training
    process, which the trainer tunes itself where it helps (on a CPU)."""
    global _TUNED_PID
    if os.getpid() != _TUNED_PID and torch.utils.data.get_worker_info() is not None:
        keep_freed_memory()
        _TUNED_PID = os.getpid()


def _stack(items, first, crop, prefix: str, stack) -> dict[str, torch.Tensor]:
    out = {}
    for key in ("image", "mask"):
        lead = first[key].shape[:first[key].ndim - len(crop)]  # (C,) for images, () or (K,) for masks
        if items:
            out[prefix + key] = stack([it[key] for it in items])
        else:
            out[prefix + key] = torch.empty((0, *lead, *crop), dtype=first[key].dtype)
    return out


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

    def __init__(self, params, patch: Sequence[int], *, multilabel: bool, seed: int | None,
                 keep_label_dtype: bool = False):
        self.params, self.patch, self.multilabel = params, tuple(int(s) for s in patch), multilabel
        self.keep_label_dtype = keep_label_dtype  # labels out as read (else int64, float32 multi-label)
        self.degrees = torch.tensor(rotation_degrees(self.patch, params), dtype=torch.float64).view(3, 2)
        self.aniso_axes, self.flip_axes = anisotropy_axes(self.patch), flip_axes(self.patch)
        self.block = swap_block(self.patch)
        self.seed = int(torch.randint(2**40, ())) if seed is None else int(seed)
        self.batches = 0  # batches augmented so far: the next one's seed
        self._basis: dict[tuple, torch.Tensor] = {}

    def __call__(self, batch: dict[str, torch.Tensor], seed: int | None = None) -> dict[str, torch.Tensor]:
        """``batch``: ``image`` (B, C, *crop) and ``mask`` of any crop at least the patch, the rotations drawn
        here; or a :class:`CropBatch`, whose ``rot_*`` samples (last in the output) are the ones rotated.
        ``seed``: the batch's, else the next of this augmenter's sequence."""
        if "rot_image" in batch:
            groups = [(batch["crop_image"], batch["crop_mask"], False), (batch["rot_image"], batch["rot_mask"], True)]
        else:
            groups = [(batch["image"], batch["mask"], None)]
        groups = [(image, mask if mask.ndim == image.ndim else mask[:, None], rotate) for image, mask, rotate in groups]
        n, channels = sum(len(g[0]) for g in groups), groups[0][0].shape[1]
        if seed is None:
            seed = (self.seed * SEED_STRIDE + self.batches) % 2**63  # any config seed, a valid generator seed
            self.batches += 1
        draw = self.draw(n, channels, torch.Generator().manual_seed(seed))
        first, device = groups[0][0], groups[0][0].device
        image = first.new_empty((n, channels, *self.patch), dtype=torch.float32)
        dtype = torch.float32 if self.multilabel else torch.int64  # converted while copied, not in a pass of its own
        dtype = groups[0][1].dtype if self.keep_label_dtype else dtype
        labels = groups[0][1].new_empty((n, groups[0][1].shape[1], *self.patch), dtype=dtype)
        start = 0
        for source, source_labels, rotate in groups:
            rows = slice(start, start + len(source))
            start = rows.stop
            if rotate is not None:
                draw.rotate[rows] = rotate
            if len(source):
                self._spatial(source.float(), source_labels, _rows(draw, rows), image[rows], labels[rows])
        noise = torch.Generator(device=device).manual_seed(seed ^ NOISE_SALT)
        image = self._intensity(image, draw, noise)
        return {"image": image, "mask": labels if self.multilabel else labels[:, 0]}

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
    def _spatial(self, image: torch.Tensor, labels: torch.Tensor, d: Draw, out_image: torch.Tensor,
                 out_labels: torch.Tensor) -> None:
        """Crops of one size into ``out_*`` (patch-sized views of the batch's outputs), in place."""
        spatial, device = image.shape[2:], image.device
        low = [(s - p) // 2 for s, p in zip(spatial, self.patch, strict=True)]
        box = (slice(None), *(slice(lo, lo + p) for lo, p in zip(low, self.patch, strict=True)))
        moved = d.rotate | d.scale
        for b in (~moved).nonzero().flatten().tolist():  # strided copies: cheaper than gathering a sub-batch
            dims = [1 + a for a in range(3) if d.flips[b, a]]
            out_image[b].copy_(image[b][box].flip(dims) if dims else image[b][box])
            out_labels[b].copy_(labels[b][box].flip(dims) if dims else labels[b][box])
        if not moved.any():
            return
        keep = torch.ones_like(d.scales)
        inverse_scale = 1 / torch.where(d.scale[:, None], d.scales, keep)
        diagonal = inverse_scale * torch.where(d.flips, -keep, keep)  # a flip after the affine: output axis reversed
        centre = [lo + (p - 1) / 2 for lo, p in zip(low, self.patch, strict=True)]
        rows = moved.nonzero().flatten()
        turn = rotation_matrices(d.angles[rows] * d.rotate[rows, None])  # the identity for scaled-only ones
        matrix = turn @ torch.diag_embed(diagonal[rows])  # exactly diagonal where unrotated
        zero = d.rotate.to(device) if self.params.pad == "zero" else None  # a rotation pads as the crop (TorchIO's)
        batch_ops.resample(image, labels, rows.to(device), matrix, centre, out_image, out_labels, zero_fill=zero)

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
    sample for the whole batch). Even a batch's dtype conversion woke a second OpenMP thread, which then spun on
    a core the workers needed."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _rows(draw: Draw, rows: slice) -> Draw:
    """The draw of a run of samples (views of ``draw``'s rows, not copies)."""
    return Draw(**{f.name: getattr(draw, f.name)[rows] for f in dataclasses.fields(draw)})


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


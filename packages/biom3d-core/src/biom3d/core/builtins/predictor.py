"""The default predictor (``core/sliding-window``): overlapping tiles, Hann-weighted blending and flip
test-time augmentation, with tiles and flips batched through the network.

Memory stays bounded: the two accumulators (probabilities and weights) are the only full-size buffers;
each tile is read from the (padded) input and added back in place.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from biom3d.core.devices import keep_freed_memory

log = logging.getLogger("biom3d")

FLIPS: tuple[tuple[int, ...], ...] = tuple(c for r in range(4) for c in itertools.combinations((0, 1, 2), r))
# what a null overlap or tta means, by mode; `fast: true` is the trade `benchmarks/bench_predict.py --fast-run`
# measured (>= 2x faster, Dice within 0.005)
PLAIN = {"overlap": 0.5, "tta": True}
FAST = {"tile_factor": 2, "overlap": 0.25, "tta": False}


def build_predictor(params, ctx) -> SlidingWindowPredictor:
    patch = params.patch_size or ctx.patch_size
    if patch is None:
        from biom3d.core.errors import ConfigError

        raise ConfigError("the predictor needs a patch size: set patch_size in the config or predictor.params")
    mode = FAST if params.fast else PLAIN  # what the user set (not null) wins over the mode's choices
    overlap = mode["overlap"] if params.overlap is None else params.overlap
    tta = mode["tta"] if params.tta is None else params.tta
    grow = None
    if params.fast and params.patch_size is None:
        grow = tuple(2 ** int(p) for p in ctx.num_pools) if ctx.num_pools else tuple(patch)
    return SlidingWindowPredictor(tuple(patch), overlap=overlap, tta=tta, batch_size=params.batch_size,
                                  multilabel=ctx.multilabel, device=ctx.device, channels_last=params.channels_last,
                                  grow_stride=grow)


class SlidingWindowPredictor:
    """Tiles of ``patch``; with ``grow_stride`` (fast mode) they grow, per image, up to ``FAST["tile_factor"]`` x the
    patch per axis, no larger than the image, in multiples of that stride (the network's total downsampling): a
    fully convolutional network computes far fewer overlapping voxels with fewer, larger tiles."""

    def __init__(self, patch: Sequence[int], *, overlap: float = PLAIN["overlap"], tta: bool = PLAIN["tta"],
                 batch_size: int | None = None,
                 multilabel: bool = False, device: str | torch.device = "cpu", channels_last: bool | None = None,
                 grow_stride: Sequence[int] | None = None):
        self.patch = tuple(int(p) for p in patch)
        self.device = torch.device(device)
        self.overlap, self.tta = overlap, tta
        self.batch_size = batch_size or (16 if self.device.type == "cuda" else 2)  # inputs per forward pass
        self.multilabel = multilabel
        # measured (benchmarks/bench_predict.py --full-width): NDHWC helps cuDNN, but costs oneDNN 1.2x at full width
        self.channels_last = self.device.type == "cuda" if channels_last is None else channels_last
        self.grow_stride = None if grow_stride is None else tuple(int(s) for s in grow_stride)
        self.window = hann_window(self.patch, device=self.device)
        # flipping an axis of one voxel (a 2D run's depth) gives the same tile: no forward pass for it
        self.flips = tuple(f for f in FLIPS if all(self.patch[d] > 1 for d in f)) if tta else ((),)

    @torch.inference_mode()
    def __call__(self, models: Sequence[torch.nn.Module] | torch.nn.Module, image) -> torch.Tensor:
        """``image`` (C, D, H, W) -> probabilities (out_channels, D, H, W) on the CPU, averaged over
        flips and models."""
        models = [models] if isinstance(models, torch.nn.Module) else list(models)
        if self.device.type == "cpu":  # each forward frees and asks again for 30+ MiB activations: keep them mapped
            keep_freed_memory()  # 1.3x faster full-width forwards (benchmarks/bench_predict.py --full-width)
        for m in models:
            m.eval()
            if self.channels_last:
                m.to(memory_format=torch.channels_last_3d)
        x = torch.as_tensor(np.asarray(image) if not isinstance(image, torch.Tensor) else image).float()
        patch, window = self._tile_for(tuple(x.shape[1:]))
        if patch != self.patch:
            try:
                return self._blend(models, x, patch, window)
            except Exception as exc:  # a network made for one input size (an ONNX graph, UNETR...), or out of memory
                first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
                log.warning("fast mode: the network does not take tiles of %s (%s: %s); predicting with tiles of its "
                            "patch %s from now on", list(patch), type(exc).__name__, first, list(self.patch))
                self.grow_stride = None
        return self._blend(models, x, self.patch, self.window)

    def _blend(self, models: list[torch.nn.Module], x: torch.Tensor, patch: tuple[int, ...],
               window: torch.Tensor) -> torch.Tensor:
        """Tiles of ``patch`` over ``x``, blended with ``window``."""
        shape = tuple(x.shape[1:])
        x, pads = pad_to(x, patch)
        flips = self.flips
        probs = weights = None
        # tiles whose flips fill one forward pass are processed together
        tiles_per_step = max(1, self.batch_size // len(flips))
        for boxes in _batches(tile_starts(tuple(x.shape[1:]), patch, self.overlap), tiles_per_step):
            tiles = torch.stack([x[(slice(None), *b)] for b in boxes]).to(self.device, non_blocking=True)
            batch = torch.cat([tiles.flip([d + 2 for d in f]) if f else tiles for f in flips])
            out = None
            for model in models:
                p = self._activate(self._forward(model, batch))
                out = p if out is None else out.add_(p)
            out = out.view(len(flips), len(boxes), *out.shape[1:])
            merged = torch.zeros_like(out[0])
            for i, f in enumerate(flips):
                merged += out[i].flip([d + 2 for d in f]) if f else out[i]
            merged.mul_(window / (len(flips) * len(models)))
            if probs is None:
                probs = torch.zeros((merged.shape[1], *x.shape[1:]), dtype=torch.float32)
                weights = torch.zeros(tuple(x.shape[1:]), dtype=torch.float32)
            merged, cpu_window = merged.cpu(), window.cpu()
            for tile, box in zip(merged, boxes, strict=True):
                probs[(slice(None), *box)] += tile
                weights[box] += cpu_window
        probs /= weights
        crop = tuple(slice(lo, lo + s) for lo, s in zip(pads, shape, strict=True))
        return probs[(slice(None), *crop)].contiguous()

    def _tile_for(self, shape: Sequence[int]) -> tuple[tuple[int, ...], torch.Tensor]:
        """The tile and its window for an image of ``shape``: the patch, or in fast mode a grown one."""
        if self.grow_stride is None:
            return self.patch, self.window
        tile = tuple(max(p, min(FAST["tile_factor"] * p, math.ceil(n / s) * s))
                     for n, p, s in zip(shape, self.patch, self.grow_stride, strict=True))
        return tile, (self.window if tile == self.patch else hann_window(tile, device=self.device))

    def _forward(self, model: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
        """Logits of ``batch`` in chunks of ``batch_size``: on a CPU, small batches are faster and lighter."""
        chunks = []
        for chunk in batch.split(self.batch_size):
            if self.channels_last:
                chunk = chunk.contiguous(memory_format=torch.channels_last_3d)
            with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.device.type == "cuda"):
                logits = model(chunk)
            chunks.append((logits[0] if isinstance(logits, list | tuple) else logits).float())
        return torch.cat(chunks) if len(chunks) > 1 else chunks[0]

    def _activate(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(logits) if self.multilabel else torch.softmax(logits, dim=1)


def hann_window(patch: Sequence[int], *, device: str | torch.device = "cpu", floor: float = 1e-4) -> torch.Tensor:
    """Separable Hann window sampled at voxel centres (never exactly zero, so every voxel keeps a weight)."""
    axes = []
    for n in patch:
        i = torch.arange(n, dtype=torch.float64)
        axes.append(0.5 - 0.5 * torch.cos(2 * math.pi * (i + 0.5) / n))
    w = axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]
    return w.clamp_min(floor).float().to(device)


def tile_starts(shape: Sequence[int], patch: Sequence[int], overlap: float) -> list[tuple[slice, ...]]:
    """Boxes covering ``shape`` with at least ``overlap`` between neighbours, evenly spread; an axis no
    longer than the patch gets a single tile."""
    per_axis = []
    for size, p in zip(shape, patch, strict=True):
        step = max(1, int(round(p * (1 - overlap))))
        n = 1 if size <= p else math.ceil((size - p) / step) + 1
        starts = [int(round(i * (size - p) / (n - 1))) for i in range(n)] if n > 1 else [0]
        per_axis.append(starts)
    return [tuple(slice(s, s + p) for s, p in zip(starts, patch, strict=True)) for starts in itertools.product(*per_axis)]


def pad_to(x: torch.Tensor, patch: Sequence[int]) -> tuple[torch.Tensor, tuple[int, ...]]:
    """Zero-pad (C, D, H, W) symmetrically up to the patch size where smaller; returns the low pads."""
    lows, pad = [], []
    for size, p in zip(x.shape[1:], patch, strict=True):
        total = max(0, p - size)
        lows.append(total // 2)
        pad.append((total // 2, total - total // 2))
    if not any(total for total, _ in pad) and not any(hi for _, hi in pad):
        return x, tuple(lows)
    flat = [v for lo_hi in reversed(pad) for v in lo_hi]
    return F.pad(x, flat), tuple(lows)


def _batches(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i : i + size]

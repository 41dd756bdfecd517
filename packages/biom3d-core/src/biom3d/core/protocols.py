"""What each kind's factory returns. Every spec ``target`` is a factory ``factory(params, ctx)`` where
``params`` is the validated params model and ``ctx`` the :class:`~biom3d.core.context.RunContext`.

These Protocols document the contract between the core's stages and plugins; nothing checks them at run
time beyond duck typing. Array conventions: images are ``(C, D, H, W)`` float32 after preprocessing; label
masks are ``(D, H, W)`` integers (0 = background), multi-label masks ``(K, D, H, W)`` in {0, 1}. Batches add a
leading ``B``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import torch

    from biom3d.core.imagedata import ImageData


@runtime_checkable
class Reader(Protocol):
    """``reader`` kind: read one file (or DICOM folder) with its spatial metadata."""

    def __call__(self, path: Path) -> ImageData: ...


@runtime_checkable
class Writer(Protocol):
    """``writer`` kind: write ``array`` to ``path`` carrying ``ref``'s metadata (spacing, origin, direction)."""

    def __call__(self, path: Path, array: np.ndarray, ref: ImageData | None) -> None: ...


@runtime_checkable
class SegmentationData(Protocol):
    """``dataset`` kind: training and validation datasets over the preprocessed folder (``ctx.data_dir``).

    Items are dicts ``{"image": float32 (C, D, H, W), "mask": int64 (D, H, W) or float32 (K, D, H, W)}``
    of size ``ctx.patch_size``. The training dataset samples (and augments) patches and has
    ``len = iterations * batch size``; the validation one crops without augmentation.
    """

    def train_dataset(self, length: int) -> torch.utils.data.Dataset: ...

    def val_dataset(self, length: int) -> torch.utils.data.Dataset: ...


@runtime_checkable
class Metric(Protocol):
    """``metric`` kind (losses too): ``(logits (B, C, ...), target) -> scalar tensor``.

    Metrics also expose ``per_class(logits, target) -> tensor (C,)`` for per-class reports.
    A loss that accepts deep-supervision outputs (a list of logits, full resolution first) says so with
    ``deep_supervision = True``.
    """

    def __call__(self, logits: Any, target: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class Postprocessor(Protocol):
    """``postprocessor`` kind: chained; the first receives probabilities ``(C, D, H, W)`` and discretizes,
    the next ones receive and return masks."""

    def __call__(self, data: np.ndarray) -> np.ndarray: ...


@runtime_checkable
class Predictor(Protocol):
    """``predictor`` kind: whole-volume inference of one or several models on a preprocessed image."""

    def __call__(self, models: Sequence[torch.nn.Module], image: np.ndarray) -> np.ndarray:
        """``image`` (C, D, H, W) -> probabilities (out_channels, D, H, W), averaged over models."""
        ...


@runtime_checkable
class Preprocessor(Protocol):
    """``preprocessor`` kind: the per-image transform shared by training and prediction."""

    def fingerprint(self, images: Sequence[ImageData], masks: Sequence[ImageData]) -> Mapping[str, Any]: ...

    def image(self, image: ImageData, fingerprint: Mapping[str, Any]) -> np.ndarray: ...

    def mask(self, mask: ImageData, image_shape: tuple[int, ...], fingerprint: Mapping[str, Any]) -> np.ndarray: ...

    def restore(self, data: np.ndarray, ref: ImageData, fingerprint: Mapping[str, Any]) -> np.ndarray: ...

"""The contract between the stages and the components: one protocol per kind, exactly what the stages call.

Every spec ``target`` is a factory ``factory(params, ctx)``: ``params`` is the validated params model,
``ctx`` the :class:`~biom3d.core.context.RunContext`; it returns an object satisfying the kind's protocol
below. A component written against this module and :mod:`biom3d.core.specs` alone, importing nothing else of
biom3d, works in every stage (the contract tests prove it with such a plugin).

Array conventions (the same in every kind):

- images after preprocessing: ``np.ndarray`` float32 ``(C, D, H, W)``; a 2D image has ``D == 1``;
- label masks: ``np.ndarray`` integer ``(D, H, W)``, 0 = background, classes ``1..num_classes``;
- multi-label masks (``ctx.multilabel``): ``np.ndarray`` uint8 ``(K, D, H, W)`` in {0, 1}, ``K = num_classes``;
- network outputs: ``torch.Tensor`` float ``(B, ctx.out_channels, D, H, W)`` logits (softmax over
  ``num_classes + 1`` channels, or sigmoid over ``num_classes`` when multi-label);
- probabilities handed between predictor, preprocessor and postprocessors: ``torch.Tensor`` float32 on the
  CPU, ``(out_channels, D, H, W)``.

Light: no torch or numpy import at run time, so plugins may import it from their light ``plugin.py``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import torch

    from biom3d.core.config import AutoConfigSettings, TrainConfig
    from biom3d.core.imagedata import ImageData

#: keys every fingerprint holds; the stages read these, a preprocessor may add its own
FINGERPRINT_KEYS = ("num_images", "num_classes", "multilabel", "in_channels", "median_shape", "spacing")
#: keys a preprocessor's ``plan`` may return: shared config values (``batch_size`` goes to ``train.batch_size``)
PLAN_KEYS = ("patch_size", "aug_patch_size", "num_pools", "batch_size")


# -- data in and out ---------------------------------------------------------------------------------------
@runtime_checkable
class Reader(Protocol):
    """``reader`` kind: read one file (or a DICOM series folder) with its spatial metadata."""

    def __call__(self, path: Path) -> ImageData: ...


@runtime_checkable
class Writer(Protocol):
    """``writer`` kind: write a mask to ``path`` carrying ``ref``'s metadata (spacing, origin, direction).

    ``array`` is the post-processed mask in the input's layout: ``(D, H, W)`` or ``(K, D, H, W)``, or
    ``(H, W)`` for a 2D input. Write atomically (a temporary file, then a rename): a killed prediction must
    never leave a truncated file under the final name."""

    def __call__(self, path: Path, array: np.ndarray, ref: ImageData | None) -> None: ...


# -- preprocessing -----------------------------------------------------------------------------------------
@dataclass
class CaseStats:
    """What one case contributes to the fingerprint; small and picklable (it crosses worker processes).

    ``shape`` is spatial (D, H, W) before resampling, ``spacing`` in the same order (None: unknown) and in
    ``unit``, the reader's ``meta["unit"]`` (None: not said; the fingerprint converts the others' lengths to one
    unit). A preprocessor keeps whatever else it needs in ``extra``; ``warnings`` are the corrections it made,
    which the stage logs and writes to ``preprocess.log``."""

    key: str
    shape: tuple[int, ...]
    spacing: tuple[float, ...] | None
    channels: int
    extra: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    unit: str | None = None


@runtime_checkable
class Preprocessor(Protocol):
    """``preprocessor`` kind: the per-image transform shared by training data and prediction inputs.

    `biom3d preprocess` calls ``analyse`` on every case, ``fingerprint`` once, ``plan`` once, then ``case``
    and ``foreground`` on every case; `biom3d predict` calls ``image`` then, on the predictor's output,
    ``restore``. Methods may run in worker processes: keep the object cheap to build. Raise
    :class:`biom3d.core.errors.DataError` naming the file for an unusable case."""

    def analyse(self, key: str, image: ImageData, mask: ImageData) -> CaseStats:
        """Check one case and measure what the fingerprint needs."""
        ...

    def fingerprint(self, stats: Sequence[CaseStats]) -> dict[str, Any]:
        """JSON-serialisable dataset fingerprint holding at least :data:`FINGERPRINT_KEYS`
        (``median_shape``: spatial, after resampling; ``spacing``: the target spacing or None, in
        ``spacing_unit`` when the images named a length unit)."""
        ...

    def plan(self, fingerprint: Mapping[str, Any], budget: AutoConfigSettings) -> dict[str, Any]:
        """Auto-configuration: values for :data:`PLAN_KEYS` (``patch_size``, ``num_pools`` as lists of ints,
        ``batch_size`` an int), within the config's ``autoconfig`` budget (``max_batch`` None: no cap of the
        user's beyond the preprocessor's own rule)."""
        ...

    def case(self, image: ImageData, mask: ImageData, fingerprint: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        """Training arrays: the image (C, D, H, W) float32 and its mask on the same (D, H, W) grid."""
        ...

    def foreground(self, mask: np.ndarray, key: str) -> dict[str, np.ndarray]:
        """Foreground voxel coordinates per class ``"1".."K"``: int32 ``(N, 3)``, for biased patch sampling."""
        ...

    def image(self, image: ImageData, fingerprint: Mapping[str, Any]) -> np.ndarray:
        """A prediction input, transformed exactly as the training images: (C, D, H, W) float32."""
        ...

    def restore(self, probs: torch.Tensor, image: ImageData) -> torch.Tensor:
        """Probabilities on the preprocessed grid -> the same on ``image``'s own (D, H, W) grid."""
        ...


# -- training ----------------------------------------------------------------------------------------------
class Model(Protocol):
    """``model`` kind: a ``torch.nn.Module`` mapping (B, ctx.in_channels, D, H, W) float32 to logits
    (B, ctx.out_channels, D, H, W) for any patch divisible by its poolings. With ``deep_supervision = True`` it
    returns, in training mode, a list of logits (full resolution first); the predictor uses the first. The
    checkpoint holds its ``state_dict()``, so ``load_state_dict`` must accept it back; predict moves it with
    ``.to(device)`` and calls ``.eval()``, as on any ``nn.Module``."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]: ...

    def state_dict(self) -> Mapping[str, Any]: ...

    def load_state_dict(self, state: Mapping[str, Any], strict: bool = True) -> Any: ...


@runtime_checkable
class SegmentationData(Protocol):
    """``dataset`` kind: training and validation datasets over the preprocessed folder ``ctx.data_dir``
    (layout in :mod:`biom3d.core.stages.preprocess`; the split in ``ctx.folds_path``, fold ``ctx.fold``).

    Items are dicts ``{"image": float32 tensor (C, *ctx.patch_size), "mask": int64 (*ctx.patch_size) or float32
    (K, *ctx.patch_size)}``. Validation items may also carry ``"valid"``: bool ``(1, *ctx.patch_size)``, True on
    voxels inside the image and False on padding (where a volume is smaller than the patch); the trainer leaves
    the padding out of the validation loss and metrics. A dataset that never pads may omit it. ``length`` is
    the number of items one epoch (or one validation round) draws.

    Optional: ``on_device(batch) -> batch``, called by the trainer on every training batch once each of its
    tensors is on the training device, under ``torch.no_grad()``; it returns the batch to train on,
    ``{"image": (B, C, *patch), "mask": ...}`` (e.g. augmented as a whole on the GPU, while the loader only
    crops). Under torchrun it runs on each rank's batch, drawing from that rank's own (seeded) RNG. A training
    dataset may have ``collate(items) -> batch``, the loader's ``collate_fn`` (default: torch's
    ``default_collate``): a batch whose items differ in shape, such as crops of two sizes, then reaches
    ``on_device`` under keys of its own."""

    def train_dataset(self, length: int) -> torch.utils.data.Dataset: ...

    def val_dataset(self, length: int) -> torch.utils.data.Dataset: ...


@runtime_checkable
class Metric(Protocol):
    """``metric`` kind, losses too: ``(logits (B, C, D, H, W), target) -> scalar tensor``; ``target`` is a
    batch of dataset masks. A loss is minimised; a metric's ``higher_is_better`` lives in its spec.

    Used as a metric, it also has ``per_class(logits, target) -> tensor (num_classes,)``, reported as
    ``val_<name>_<class>`` for classes 1..K (an optional ``class_labels`` list renames them). A loss that takes
    deep-supervision outputs (a list of logits, full resolution first) sets ``deep_supervision = True``."""

    def __call__(self, logits: Any, target: torch.Tensor) -> torch.Tensor: ...


class Callback(Protocol):
    """``callback`` kind: code run at six points of training. Subclass it and override what you need (the
    other hooks do nothing). ``trainer`` is a :class:`TrainerState`; epochs are counted from 0 here."""

    def on_train_begin(self, trainer: TrainerState) -> None: ...

    def on_train_end(self, trainer: TrainerState) -> None: ...

    def on_epoch_begin(self, trainer: TrainerState, epoch: int) -> None: ...

    def on_epoch_end(self, trainer: TrainerState, epoch: int, logs: dict[str, float]) -> None: ...

    def on_batch_begin(self, trainer: TrainerState, step: int) -> None: ...

    def on_batch_end(self, trainer: TrainerState, step: int, logs: dict[str, Any]) -> None: ...

    # core's checkpoint callback saves every callback's state in its own on_epoch_end: a callback listed after
    # it is saved before its on_epoch_end of that epoch, so record state early (on_epoch_begin) or list it first

    def state_dict(self) -> dict[str, Any]:
        """State saved in checkpoints so a resumed run continues where it stopped (e.g. early stopping)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class TrainerState(Protocol):
    """What a trainer shows its callbacks. ``stop_training = True`` stops after the current epoch;
    ``last_val_sample`` is (image, truth, prediction) numpy arrays of one validation patch, or None."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    epoch: int
    epochs: int
    history: list[dict[str, float]]
    run_dir: Path
    train_cfg: TrainConfig
    device: torch.device
    monitor: str
    monitor_higher: bool
    stop_training: bool
    last_val_sample: tuple[Any, Any, Any] | None

    def state_dict(self) -> dict[str, Any]:
        """Everything a checkpoint holds, in types ``torch.load(weights_only=True)`` accepts: at least
        ``"model"`` (the unwrapped network's state_dict, which predict loads) and ``"epoch"`` (the last finished
        epoch, from 0, which resume continues after)."""
        ...


@dataclass
class TrainJob:
    """What the Builder hands ``Trainer.fit``: built components plus the run's settings.

    ``metrics`` are ``(name, metric, higher_is_better)``; ``resume`` is a checkpoint loaded with
    ``torch.load(weights_only=True)`` (the trainer's own ``state_dict``) to continue from."""

    model: Any  # torch.nn.Module
    loss: Any
    metrics: Sequence[tuple[str, Any, bool]]
    data: SegmentationData
    callbacks: Sequence[Callback]
    train: Any  # biom3d.core.config.TrainConfig
    run_dir: Path
    resume: dict[str, Any] | None = None
    extra_state: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Trainer(Protocol):
    """``trainer`` kind: the training loop. Calls the job's callbacks at their six points, writes nothing
    itself (checkpoints and logs are callbacks), and returns the per-epoch logs."""

    def fit(self, job: TrainJob) -> list[dict[str, float]]: ...


# -- prediction --------------------------------------------------------------------------------------------
@runtime_checkable
class Predictor(Protocol):
    """``predictor`` kind: whole-volume inference of one or several models on a preprocessed image."""

    def __call__(self, models: Sequence[torch.nn.Module], image: np.ndarray) -> torch.Tensor:
        """``image`` (C, D, H, W) float32 -> probabilities (out_channels, D, H, W), float32 on the CPU,
        averaged over the models."""
        ...


@runtime_checkable
class Postprocessor(Protocol):
    """``postprocessor`` kind, chained in the config's list: the first receives the probabilities
    (``np.ndarray`` (out_channels, D, H, W) float32) and returns a mask; each next one receives and returns a
    mask ((D, H, W) labels or (K, D, H, W) multi-label, see the module docstring)."""

    def __call__(self, data: np.ndarray) -> np.ndarray: ...

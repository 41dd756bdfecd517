"""biom3d-core's own components, registered through the same hooks as every plugin (plugin name ``core``).

Light: params models and spec records only; every target module is imported when a run builds it.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from biom3d.core.hookspecs import hookimpl
from biom3d.core.specs import (
    CallbackSpec,
    Params,
    PostprocessorSpec,
    PredictorSpec,
    PreprocessorSpec,
    StackSpec,
    TrainerSpec,
)


class PreprocessParams(Params):
    norm: Literal["zscore", "ct"] = Field(
        "zscore", description="'zscore': per image mean/std; 'ct': clip to dataset 0.5/99.5 percentiles, dataset mean/std."
    )
    zscore_over: Literal["channel", "image"] = Field(
        "channel", description="What one z-score mean/std covers: each channel (nnU-Net's) or the whole image, all "
        "channels together (the original biom3d's); the same for one-channel images.")
    resample: bool = Field(True, description="Resample to the dataset's median spacing (when images carry spacing).")
    image_order: Literal[1, 3] = Field(1, description="Image interpolation: 1 trilinear, 3 cubic.")
    mask_interp: Literal["labelwise", "nearest"] = Field(
        "labelwise", description="Mask resampling: per-label linear then argmax, or nearest neighbour."
    )
    anisotropy: float = Field(3.0, gt=1, description="Spacing ratio above which the coarse axis is resampled apart.")
    channel_axis: int | None = Field(None, ge=-4, le=3, description="Channel axis of stored images (null: detect).")
    mask_fix: Literal["auto", "strict", "binarize"] = Field(
        "auto",
        description="'auto': fix 0/255, grey-level relabelling and (1 class) few-level thresholding with a warning; "
        "'strict': refuse any deviation; 'binarize': every non-background level is foreground (1 class).",
    )
    fg_samples: int = Field(10_000, ge=1, description="Foreground locations stored per class and image.")
    plan_from: Literal["stored", "resampled"] = Field(
        "stored", description="Median shape the auto-configuration reads: of the images as stored (the original "
        "biom3d's rule) or resampled to the median spacing (nnU-Net's); they differ only where spacings vary.")


@hookimpl
def biom3d_preprocessors():
    yield PreprocessorSpec(
        name="seg-preprocess",
        target="biom3d.core.builtins.preprocessing:build_preprocessor",
        params=PreprocessParams,
        summary="Channel detection, mask checks, z-score/CT normalisation, resampling to the median spacing.",
    )


class TrainerParams(Params):
    """The loop takes its settings from the config's ``train`` section; these say how it judges them."""

    monitor: Literal["metric", "loss"] = Field(
        "metric", description="The validation value best.pt and early stopping follow: 'metric', the first of "
        "`metrics` (a Dice in the stacks, as nnU-Net keeps its best), or 'loss', the validation loss (the original "
        "biom3d's best checkpoint). Without validation, the training loss.")


@hookimpl
def biom3d_trainers():
    yield TrainerSpec(
        name="seg-trainer",
        target="biom3d.core.builtins.trainer:build_trainer",
        params=TrainerParams,
        summary="SGD/Adam loop with gradient clipping, mixed precision on CUDA, validation, six callback points.",
    )


class LRScheduleParams(Params):
    warmup_epochs: int = Field(0, ge=0, description="Linear warm-up epochs before the schedule starts.")
    min_lr: float = Field(0.0, ge=0, description="Learning rate at the end of the schedule.")
    poly_exponent: float = Field(0.9, gt=0, description="Exponent of the poly schedule.")


class CheckpointParams(Params):
    every: int = Field(1, ge=1, description="Write last.pt every N epochs (and at the end).")
    save_best: bool = Field(True, description="Write best.pt when the monitored value improves.")


class ProgressParams(Params):
    bar: bool = Field(True, description="Show a progress bar per epoch.")
    refresh_every: int = Field(5, ge=1, description="Update loss and throughput every N batches.")


class SnapshotParams(Params):
    every: int = Field(1, ge=1, description="Write a snapshot every N epochs (when validation ran).")


class EarlyStoppingParams(Params):
    patience: int = Field(20, ge=1, description="Validations without improvement before stopping.")
    min_delta: float = Field(0.0, ge=0, description="Smallest change that counts as an improvement.")


@hookimpl
def biom3d_callbacks():
    target = "biom3d.core.builtins.callbacks:build_"
    yield CallbackSpec(name="lr-schedule", target=target + "lr_schedule", params=LRScheduleParams,
                       summary="Cosine, poly or constant learning rate from train.scheduler, optional warm-up.")
    yield CallbackSpec(name="checkpoint", target=target + "checkpoint", params=CheckpointParams, writes_checkpoints=True,
                       summary="checkpoints/last.pt and best.pt, written atomically with full training state.")
    yield CallbackSpec(name="csv-log", target=target + "csv_log", summary="log.csv: per-epoch losses, metrics, lr, time.")
    yield CallbackSpec(name="progress", target=target + "progress", params=ProgressParams,
                       summary="Console progress bar per epoch and one summary line per epoch.")
    yield CallbackSpec(name="curves", target=target + "curves", summary="curves.png: loss and metric curves.")
    yield CallbackSpec(name="snapshots", target=target + "snapshots", params=SnapshotParams,
                       summary="snapshots/: PNG overlays of a validation slice (image, truth, prediction).")
    yield CallbackSpec(name="early-stopping", target=target + "early_stopping", params=EarlyStoppingParams,
                       summary="Stop when the monitored metric stops improving.")


class PredictorParams(Params):
    # overlap and tta are null unless chosen, so that a run's saved config (every param written out) still lets
    # `fast` pick its own values: an explicit 0.5 would be indistinguishable from the default there
    overlap: float | None = Field(
        None, ge=0, lt=1, description="Overlap between neighbouring tiles, a fraction of the patch (null: 0.5; 0.25 in fast mode)."
    )
    tta: bool | None = Field(
        None, description="Average over the 8 flips, identity + 7 axis combinations (null: on; off in fast mode)."
    )
    batch_size: int | None = Field(
        None, ge=1, description="Network inputs (tiles x flips) per forward pass (null: 2 on CPU, 16 on CUDA)."
    )
    patch_size: tuple[int, int, int] | None = Field(None, description="Tile size (null: the run's patch_size).")
    channels_last: bool | None = Field(
        None, description="Run the network on channels-last (NDHWC) tensors (null: on CUDA, where cuDNN prefers them; "
        "not on a CPU, where oneDNN ran the paper's network 1.2x faster on NCDHW)."
    )
    fast: bool = Field(
        False,
        description="Trade a little accuracy for speed: tiles twice the patch per axis (at most the image, in multiples of "
        "the network's stride), overlap 0.25 and no flip TTA, unless overlap, tta or patch_size are set (not null).",
    )


@hookimpl
def biom3d_predictors():
    yield PredictorSpec(
        name="sliding-window",
        target="biom3d.core.builtins.predictor:build_predictor",
        params=PredictorParams,
        summary="Overlapping tiles, Hann-weighted blending, batched flip test-time augmentation.",
    )


class ThresholdParams(Params):
    threshold: float = Field(0.5, gt=0, lt=1, description="Probability above which a voxel belongs to a class.")


class ClassesParams(Params):
    classes: list[int] | None = Field(None, description="Classes to clean (null: all).")


class RemoveSmallParams(ClassesParams):
    min_size: int | None = Field(None, ge=1, description="Smallest component kept, in voxels (null: Otsu threshold).")


@hookimpl
def biom3d_postprocessors():
    target = "biom3d.core.builtins.postprocess:build_"
    yield PostprocessorSpec(name="discretize", target=target + "discretize", params=ThresholdParams,
                            summary="Probabilities -> mask: argmax (softmax) or threshold (multi-label), as the run.")
    yield PostprocessorSpec(name="argmax", target=target + "argmax", summary="Softmax outputs -> label map.")
    yield PostprocessorSpec(name="threshold", target=target + "threshold", params=ThresholdParams,
                            summary="Sigmoid outputs -> multi-label mask (probability > threshold).")
    yield PostprocessorSpec(name="keep-largest", target=target + "keep_largest", params=ClassesParams,
                            summary="Keep the largest connected component of each class.")
    yield PostprocessorSpec(name="remove-small", target=target + "remove_small", params=RemoveSmallParams,
                            summary="Drop components below an Otsu threshold of component volumes (or min_size).")


#: the callbacks every run gets unless its config lists its own
DEFAULT_CALLBACKS = ("lr-schedule", "checkpoint", "csv-log", "progress", "curves", "snapshots")


@hookimpl
def biom3d_stacks():
    yield StackSpec(
        name="base",
        priority=-1000,  # never the default while any complete stack is installed
        summary="Core's preprocessing, trainer, sliding-window predictor, post-processing and callbacks; "
        "no model, dataset or loss: stacks extend it.",
        components={
            "preprocessor": "core/seg-preprocess",
            "trainer": "core/seg-trainer",
            "predictor": "core/sliding-window",
            "postprocessors": ["core/discretize"],
            "callbacks": [f"core/{name}" for name in DEFAULT_CALLBACKS],
        },
    )

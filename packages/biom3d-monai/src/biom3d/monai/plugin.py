"""biom3d-monai plugin entry: hookimpls and params models only.

Discovery imports this module, so it never imports monai (about 3 s), torch or numpy: every ``target`` is a
``"biom3d.monai.<module>:<factory>"`` string imported when a run builds that component.
"""

from __future__ import annotations

from collections.abc import Iterator

from biom3d.core import hookimpl
from biom3d.core.specs import DatasetSpec, MetricSpec, ModelSpec, ReaderSpec, StackSpec, WriterSpec
from biom3d.monai.dataparams import MonaiDatasetParams, SaveImageParams
from biom3d.monai.metricparams import (
    DiceCELossParams,
    DiceFocalLossParams,
    DiceLossParams,
    FocalLossParams,
    GeneralizedDiceLossParams,
    HausdorffParams,
    OverlapMetricParams,
    TverskyLossParams,
)
from biom3d.monai.params import (
    AttentionUnetParams,
    BasicUNetParams,
    DynUNetParams,
    SegResNetParams,
    SwinUNETRParams,
    UNetParams,
    UNETRParams,
)

PRIORITY = -10  # biom3d-io's readers and writers win where both are installed
READER_SUFFIXES = (".nii.gz", ".nii", ".npy", ".png", ".jpg", ".jpeg", ".bmp")
WRITER_SUFFIXES = (".nii.gz", ".nii")
LOSS = frozenset({"loss"})


def _target(module: str, factory: str) -> str:
    return f"biom3d.monai.{module}:{factory}"


@hookimpl
def biom3d_models() -> Iterator[ModelSpec]:
    nets = "networks"
    yield ModelSpec(
        name="unet",
        aliases=("UNet",),
        target=_target(nets, "build_unet"),
        params=UNetParams,
        summary="MONAI UNet (residual units); strides from the run's pooling.",
    )
    yield ModelSpec(
        name="basic-unet",
        aliases=("BasicUNet",),
        target=_target(nets, "build_basic_unet"),
        params=BasicUNetParams,
        summary="MONAI BasicUNet: five levels, four 2x poolings (patch divisible by 16).",
    )
    yield ModelSpec(
        name="dyn-unet",
        aliases=("DynUNet",),
        target=_target(nets, "build_dyn_unet"),
        params=DynUNetParams,
        summary="MONAI DynUNet (nnU-Net): strides from the run's pooling counts, optional deep supervision.",
    )
    yield ModelSpec(
        name="segresnet",
        aliases=("SegResNet",),
        target=_target(nets, "build_segresnet"),
        params=SegResNetParams,
        summary="MONAI SegResNet: residual encoder-decoder with group normalisation.",
    )
    yield ModelSpec(
        name="unetr",
        aliases=("UNETR",),
        target=_target(nets, "build_unetr"),
        params=UNETRParams,
        summary="MONAI UNETR: ViT encoder over the patch (divisible by 16), convolutional decoder.",
    )
    yield ModelSpec(
        name="swin-unetr",
        aliases=("SwinUNETR",),
        target=_target(nets, "build_swin_unetr"),
        params=SwinUNETRParams,
        summary="MONAI SwinUNETR: Swin transformer encoder (patch divisible by 32).",
    )
    yield ModelSpec(
        name="attention-unet",
        aliases=("AttentionUnet",),
        target=_target(nets, "build_attention_unet"),
        params=AttentionUnetParams,
        summary="MONAI AttentionUnet: U-Net with attention gates on the skips.",
    )


@hookimpl
def biom3d_metrics() -> Iterator[MetricSpec]:
    losses, metrics = "losses", "metrics"
    yield MetricSpec(
        name="dice-loss",
        aliases=("DiceLoss",),
        target=_target(losses, "build_dice_loss"),
        params=DiceLossParams,
        roles=LOSS,
        higher_is_better=False,
        summary="MONAI DiceLoss (softmax or sigmoid from the run).",
    )
    yield MetricSpec(
        name="dice-ce-loss",
        aliases=("DiceCELoss",),
        target=_target(losses, "build_dice_ce_loss"),
        params=DiceCELossParams,
        roles=LOSS,
        higher_is_better=False,
        summary="MONAI DiceCELoss: Dice + cross-entropy (BCE for multi-label runs).",
    )
    yield MetricSpec(
        name="dice-focal-loss",
        aliases=("DiceFocalLoss",),
        target=_target(losses, "build_dice_focal_loss"),
        params=DiceFocalLossParams,
        roles=LOSS,
        higher_is_better=False,
        summary="MONAI DiceFocalLoss: Dice + focal.",
    )
    yield MetricSpec(
        name="tversky-loss",
        aliases=("TverskyLoss",),
        target=_target(losses, "build_tversky_loss"),
        params=TverskyLossParams,
        roles=LOSS,
        higher_is_better=False,
        summary="MONAI TverskyLoss: Dice with separate false-positive/negative weights.",
    )
    yield MetricSpec(
        name="generalized-dice-loss",
        aliases=("GeneralizedDiceLoss",),
        target=_target(losses, "build_generalized_dice_loss"),
        params=GeneralizedDiceLossParams,
        roles=LOSS,
        higher_is_better=False,
        summary="MONAI GeneralizedDiceLoss: class weights from their volumes.",
    )
    yield MetricSpec(
        name="focal-loss",
        aliases=("FocalLoss",),
        target=_target(losses, "build_focal_loss"),
        params=FocalLossParams,
        roles=LOSS,
        higher_is_better=False,
        summary="MONAI FocalLoss (softmax or sigmoid from the run).",
    )
    yield MetricSpec(
        name="dice-metric",
        aliases=("DiceMetric",),
        target=_target(metrics, "build_dice_metric"),
        params=OverlapMetricParams,
        summary="MONAI Dice on discretised predictions, per class.",
    )
    yield MetricSpec(
        name="mean-iou",
        aliases=("MeanIoU",),
        target=_target(metrics, "build_mean_iou"),
        params=OverlapMetricParams,
        summary="MONAI IoU on discretised predictions, per class.",
    )
    yield MetricSpec(
        name="hausdorff",
        aliases=("HausdorffDistanceMetric",),
        target=_target(metrics, "build_hausdorff"),
        params=HausdorffParams,
        higher_is_better=False,
        summary="MONAI Hausdorff distance (or a percentile), in the run's spacing units.",
    )


@hookimpl
def biom3d_readers() -> Iterator[ReaderSpec]:
    yield ReaderSpec(
        name="load-image",
        aliases=("LoadImage",),
        target=_target("reader", "build_reader"),
        suffixes=READER_SUFFIXES,
        priority=PRIORITY,
        summary="MONAI LoadImage: NIfTI (nibabel), .npy, 2D PNG/JPEG/BMP (Pillow), in SimpleITK's axis order.",
    )


@hookimpl
def biom3d_writers() -> Iterator[WriterSpec]:
    yield WriterSpec(
        name="save-image",
        target=_target("writer", "build_writer"),
        params=SaveImageParams,
        suffixes=WRITER_SUFFIXES,
        priority=PRIORITY,
        summary="NIfTI writer (nibabel) carrying the input's spacing/origin/direction; atomic, no overwrite by default.",
    )


@hookimpl
def biom3d_datasets() -> Iterator[DatasetSpec]:
    yield DatasetSpec(
        name="monai-dataset",
        target=_target("dataset", "build_dataset"),
        params=MonaiDatasetParams,
        summary="Preprocessed folder, pos/neg patch sampling and nnU-Net-like MONAI augmentation.",
    )


@hookimpl
def biom3d_stacks() -> Iterator[StackSpec]:
    yield StackSpec(
        name="dynunet",
        priority=50,  # below the paper's stack (biom3d-models) where both are installed
        summary="MONAI's DynUNet (nnU-Net layout from the run's pooling), Dice + CE, MONAI patch dataset and "
        "reader, core's trainer and predictor.",
        extends="core/base",
        components={
            "dataset": "monai/monai-dataset",
            "model": "monai/dyn-unet",
            "loss": "monai/dice-ce-loss",
            "metrics": ["monai/dice-metric", "monai/mean-iou"],
        },
        small={"model": {"name": "monai/dyn-unet", "params": {"base_features": 8}}},
    )

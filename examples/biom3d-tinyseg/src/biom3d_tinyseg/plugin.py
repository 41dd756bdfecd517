"""What biom3d imports at discovery: params models and spec records only (no torch, no numpy here).

Every ``target`` is a factory ``factory(params, ctx)`` in a heavy module, imported when a run builds it.
"""

from __future__ import annotations

from pydantic import Field, ValidationInfo, field_validator

from biom3d.core import hookimpl
from biom3d.core.specs import (
    CallbackSpec,
    MetricSpec,
    ModelSpec,
    Params,
    PostprocessorSpec,
    ReaderSpec,
    StackSpec,
    WriterSpec,
)

PKG = "biom3d_tinyseg"


# -- params: pydantic models, unknown keys are errors -------------------------------------------------------
class NetParams(Params):
    features: int = Field(8, ge=1, le=64, description="Feature maps of the first level (doubled per level).")
    levels: int = Field(1, ge=0, le=4, description="Number of 2x poolings.")

    @field_validator("levels")
    @classmethod
    def _patch_fits(cls, levels: int, info: ValidationInfo) -> int:
        run = (info.context or {}).get("run")  # the RunContext, when biom3d validates a config
        patch = getattr(run, "patch_size", None)  # None before `biom3d preprocess` has chosen one
        if patch and any(side % 2**levels for side in patch):
            raise ValueError(f"patch_size {list(patch)} is not divisible by {2**levels} (2 ** levels); "
                             "lower levels or choose a patch_size divisible by it")
        return levels


class LossParams(Params):
    dice_weight: float = Field(1.0, ge=0, description="Weight of the soft Dice term added to cross-entropy.")


class EpochLogParams(Params):
    filename: str = Field("tinyseg-epochs.jsonl", pattern=r"^[\w.-]+$", description="File in the run folder.")
    every: int = Field(1, ge=1, description="Write a line every N epochs.")


class TinyReaderParams(Params):
    """The reader takes no setting."""


class TinyWriterParams(Params):
    overwrite: bool = Field(False, description="Replace an existing file (`biom3d predict --overwrite` sets it).")
    level: int = Field(6, ge=0, le=9, description="zlib compression level.")


class MinVolumeParams(Params):
    min_voxels: int = Field(8, ge=1, description="A class with fewer voxels than this is cleared.")


# -- one hook per kind --------------------------------------------------------------------------------------
@hookimpl
def biom3d_models():
    yield ModelSpec(name="tiny-convnet", aliases=("TinyConvNet",), target=f"{PKG}.nets:build_model",
                    params=NetParams, summary="A small 3D encoder-decoder (tinyseg).")


@hookimpl
def biom3d_metrics():
    yield MetricSpec(name="soft-dice-ce", target=f"{PKG}.losses:build_loss", params=LossParams,
                     roles=frozenset({"loss"}), higher_is_better=False,
                     summary="Cross-entropy (BCE when multi-label) plus soft Dice (tinyseg).")
    yield MetricSpec(name="hard-dice", target=f"{PKG}.losses:build_dice", roles=frozenset({"metric"}),
                     higher_is_better=True, summary="Dice of the discretised prediction, per class (tinyseg).")


@hookimpl
def biom3d_callbacks():
    yield CallbackSpec(name="epoch-log", target=f"{PKG}.callbacks:build_epoch_log", params=EpochLogParams,
                       summary="One JSON line per epoch in the run folder (tinyseg).")


@hookimpl
def biom3d_readers():
    yield ReaderSpec(name="tiny", target=f"{PKG}.tinyfile:build_reader", params=TinyReaderParams,
                     suffixes=(".tiny",), summary="The .tiny format: a JSON header, then zlib-compressed voxels.")


@hookimpl
def biom3d_writers():
    yield WriterSpec(name="tiny", target=f"{PKG}.tinyfile:build_writer", params=TinyWriterParams,
                     suffixes=(".tiny",), summary="Writes .tiny masks atomically with the input's spacing.")


@hookimpl
def biom3d_postprocessors():
    yield PostprocessorSpec(name="min-volume", target=f"{PKG}.postprocess:build_min_volume",
                            params=MinVolumeParams, summary="Clear classes with fewer voxels than min_voxels.")


@hookimpl
def biom3d_stacks():
    yield StackSpec(
        name="tiny",  # tinyseg/tiny
        extends="core/base",  # core's preprocessor, trainer, predictor fill the slots left out here
        priority=5,  # below the paper's stack (100): installing tinyseg changes no default
        components={
            "model": {"name": "tinyseg/tiny-convnet", "params": {"features": 8}},
            "loss": "tinyseg/soft-dice-ce",
            "metrics": ["tinyseg/hard-dice"],
            "dataset": {"name": "io/patch-dataset", "params": {"augment": False}},
            "callbacks": ["tinyseg/epoch-log"],  # added to core/base's callbacks, as a config's are
            "postprocessors": ["core/discretize", "tinyseg/min-volume"],
        },
        small={"model": {"name": "tinyseg/tiny-convnet", "params": {"features": 4}}},
        summary="The tiny conv net with a soft Dice + CE loss on biom3d-io's patches.",
    )

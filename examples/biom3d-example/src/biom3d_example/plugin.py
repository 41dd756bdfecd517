"""What biom3d imports at discovery: params models and spec records. No torch here."""

from __future__ import annotations

from pydantic import Field

from biom3d.core import hookimpl
from biom3d.core.specs import MetricSpec, ModelSpec, Params, StackSpec


class TinyUNetParams(Params):  # unknown keys are errors; schema built on first use
    features: int = Field(8, ge=1, le=256, description="Feature maps of the first level (doubled below).")
    levels: int = Field(2, ge=1, le=5, description="Number of 2x down-samplings.")


class FocalParams(Params):
    gamma: float = Field(2.0, ge=0, description="Focusing exponent; 0 gives cross-entropy.")


@hookimpl
def biom3d_models():
    yield ModelSpec(
        name="tiny-unet",
        aliases=("TinyUNet",),
        target="biom3d_example.nets:build_tiny_unet",
        params=TinyUNetParams,
        summary="A small 3D U-Net (example plugin).",
    )


@hookimpl
def biom3d_metrics():
    yield MetricSpec(
        name="focal",
        target="biom3d_example.losses:build_focal",
        params=FocalParams,
        roles=frozenset({"loss"}),
        higher_is_better=False,
        summary="Focal loss on softmax outputs (example plugin).",
    )


@hookimpl
def biom3d_stacks():
    # below the paper's stack (priority 100): installing this plugin changes no default; `stack: example/tiny` or
    # `--stack example/tiny` chooses it
    yield StackSpec(
        name="tiny",
        extends="core/base",
        priority=10,
        components={
            "model": {"name": "example/tiny-unet", "params": {"features": 8}},
            "loss": "example/focal",
            "dataset": "io/patch-dataset",
            "metrics": ["models/dice"],
        },
        summary="The tiny U-Net with a focal loss on biom3d-io's patches (example plugin).",
    )

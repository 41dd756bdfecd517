"""An in-process plugin used through the `biom3d_plugins` fixture: a few components and a stack of them."""

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, model_validator

from biom3d.core import hookimpl
from biom3d.core.specs import DatasetSpec, MetricSpec, ModelSpec, ReaderSpec, StackSpec


class NetParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    num_pools: tuple[int, int, int] | None = Field(None, description="Overrides the run's pooling.")
    depth: int = Field(4, ge=1, le=6)
    norm: Literal["batch", "instance"] = "instance"


class SwinParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    feature_size: int = Field(24, ge=12)

    @model_validator(mode="after")
    def _patch_divisible(self, info: ValidationInfo):
        run = (info.context or {}).get("run")
        if run is not None and run.patch_size and any(p % 32 for p in run.patch_size):
            raise ValueError(f"patch_size {list(run.patch_size)} must be divisible by 32 for this network")
        return self


def build_metric(params, ctx):
    return ("metric", ctx.num_classes)


def build_net(params, ctx):
    return ("net", params.num_pools or ctx.num_pools, params.depth, ctx.out_channels)


@hookimpl
def biom3d_models():
    yield ModelSpec(name="net", aliases=("Net3D",), target=build_net, params=NetParams, summary="Test net.")
    yield ModelSpec(name="swin", target=build_net, params=SwinParams, summary="Patch must divide by 32.")


@hookimpl
def biom3d_metrics():
    yield MetricSpec(name="dice", target=build_metric, roles={"metric", "loss"}, summary="Dice.")
    yield MetricSpec(name="dice-ce", target=build_metric, roles={"loss"}, summary="Dice + CE.")
    yield MetricSpec(name="iou", target=build_metric, roles={"metric"}, summary="IoU.")


@hookimpl
def biom3d_readers():
    yield ReaderSpec(name="tiff", target=build_net, suffixes=(".tif", ".tiff"))
    yield ReaderSpec(name="ome-tiff", target=build_net, suffixes=(".ome.tif",))
    yield ReaderSpec(name="tiff-fast", target=build_net, suffixes=(".tif",), priority=5)
    yield ReaderSpec(name="dicom", target=build_net, directory=True)


@hookimpl
def biom3d_datasets():
    yield DatasetSpec(name="crops", target=build_net, summary="Test dataset.")


@hookimpl
def biom3d_stacks():
    yield StackSpec(name="tiny", priority=10, extends="core/base", summary="Test stack.",
                    components={"dataset": "sample/crops", "model": "sample/net", "loss": "sample/dice-ce",
                                "metrics": ["sample/dice", "sample/iou"]})

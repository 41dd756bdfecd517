"""biom3d-core's own components, registered through the same hooks as every plugin (plugin name ``core``).

Light: params models and spec records only; every target module is imported when a run builds it.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from biom3d.core.hookspecs import hookimpl
from biom3d.core.specs import PreprocessorSpec


class PreprocessParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    norm: Literal["zscore", "ct"] = Field(
        "zscore", description="'zscore': per image mean/std; 'ct': clip to dataset 0.5/99.5 percentiles, dataset mean/std."
    )
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


@hookimpl
def biom3d_preprocessors():
    yield PreprocessorSpec(
        name="seg-preprocess",
        target="biom3d.core.preprocessing:build_preprocessor",
        params=PreprocessParams,
        summary="Channel detection, mask checks, z-score/CT normalisation, resampling to the median spacing.",
    )

"""Params models of the MONAI writer and dataset. Light: pydantic only."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator

Probability = Annotated[float, Field(ge=0.0, le=1.0)]
PosInt = Annotated[int, Field(ge=1)]


class SaveImageParams(BaseModel):
    model_config = ConfigDict(extra="forbid", defer_build=True)

    overwrite: bool = Field(False, description="Replace existing files instead of refusing to.")
    compress_level: int = Field(6, ge=0, le=9, description="gzip level of .nii.gz files (0: fastest, 9: smallest).")


class MonaiDatasetParams(BaseModel):
    """Patch sampling and nnU-Net-like augmentation; ``augment: false`` (or zero probabilities) turns it down."""

    model_config = ConfigDict(extra="forbid", defer_build=True)

    patch_size: tuple[PosInt, PosInt, PosInt] | None = Field(None, description="Overrides the run's patch size.")
    pos: float = Field(1.0, ge=0.0, description="Relative frequency of patches centred on foreground.")
    neg: float = Field(2.0, ge=0.0, description="Relative frequency of patches centred anywhere (1 in 3 by default).")
    augment: bool = Field(True, description="Augment training patches (validation patches never are).")
    flip_prob: Probability = Field(0.5, description="Probability of a mirror flip, per axis.")
    affine_prob: Probability = Field(0.2, description="Probability of a random rotation + scaling.")
    rotate_degrees: float = Field(30.0, ge=0.0, le=180.0, description="Largest rotation, within core's rotation_plane.")
    scale_range: float = Field(0.2, ge=0.0, le=0.9, description="Scaling by 1 +/- this (0: none).")
    noise_prob: Probability = Field(0.1, description="Probability of additive Gaussian noise.")
    noise_std: float = Field(
        0.1, ge=0.0, le=1.0, description="Largest noise standard deviation (z-scored intensities)."
    )
    smooth_prob: Probability = Field(0.2, description="Probability of a Gaussian blur (sigma 0.5-1 voxel).")
    intensity_prob: Probability = Field(0.15, description="Probability of an intensity scaling by 1 +/- 0.25.")
    gamma_prob: Probability = Field(0.3, description="Probability of a gamma (contrast) change in [0.7, 1.5].")

    @model_validator(mode="after")
    def _some_sampling(self) -> MonaiDatasetParams:
        if self.pos + self.neg <= 0:
            raise ValueError("pos and neg are both 0: no patch could be sampled")
        return self

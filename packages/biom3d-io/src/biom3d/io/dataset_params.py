"""Params of the patch dataset (light: imported by plugin.py at discovery)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class PatchDatasetParams(BaseModel):
    model_config = ConfigDict(extra="forbid", defer_build=True)

    fg_rate: float = Field(1 / 3, ge=0, le=1, description="Share of patches centred on a foreground voxel.")
    augment: bool = Field(True, description="Apply TorchIO augmentations to training patches.")
    rotation_degrees: float | None = Field(
        None, ge=0, le=180, description="Rotation range; null: 30 for 3D rotations, 180 within the plane of anisotropic patches."
    )
    scales: tuple[float, float] = Field((0.7, 1.4), description="Random scaling range.")
    p_affine: float = Field(0.25, ge=0, le=1, description="Probability of a random rotation/scaling.")
    p_anisotropy: float = Field(0.2, ge=0, le=1, description="Probability of simulated anisotropy.")
    p_flip: float = Field(0.5, ge=0, le=1, description="Probability of flipping along each axis.")
    p_bias: float = Field(0.15, ge=0, le=1, description="Probability of a bias field.")
    p_blur: float = Field(0.2, ge=0, le=1, description="Probability of a Gaussian blur.")
    p_noise: float = Field(0.2, ge=0, le=1, description="Probability of Gaussian noise.")
    p_swap: float = Field(0.2, ge=0, le=1, description="Probability of swapping patches of voxels.")
    p_gamma: float = Field(0.3, ge=0, le=1, description="Probability of a gamma (contrast) change.")
    preload: bool = Field(False, description="Load every volume in memory instead of memory-mapping it.")

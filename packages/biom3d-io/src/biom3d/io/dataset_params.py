"""Params of the patch dataset (light: imported by plugin.py at discovery).

The defaults are the original biom3d's SegPatchFast, the paper's training pipeline; they live here only."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

RANGES = ("scales", "anisotropy_downsampling", "blur_std", "noise_std", "log_gamma")


class PatchDatasetParams(BaseModel):
    model_config = ConfigDict(extra="forbid", defer_build=True)

    fg_rate: float = Field(
        0.33, ge=0, le=1,
        description="Foreground share of each batch: of a batch of B patches, the last B - round(B * (1 - fg_rate)) "
                    "are centred on a foreground voxel (the original's rule: batch 2 -> 1 of 2, batch 4 -> 1 of 4).",
    )
    crop: Literal["centred", "inside"] = Field(
        "centred",
        description="Where a patch lies: 'centred' on its drawn voxel (a foreground voxel, else any voxel) and cut "
                    "off by the volume's border, the part inside placed in the middle of the patch and the rest "
                    "padded (the original's centered_crop + centered_pad: border voxels are trained on as often as "
                    "central ones, as the sliding window predicts them); 'inside': moved into the volume wherever "
                    "the volume is larger than the patch, padded only where it is smaller.",
    )
    pad: Literal["zero", "minimum"] = Field(
        "zero",
        description="What the image is padded with past the volume, and a rotation past its crop: 'zero' (the "
                    "original's, the z-scored mean, which the predictor's tiles are padded with too) or 'minimum' "
                    "(the volume's per-channel minimum, its background). Masks are padded with 0.",
    )
    augment: bool = Field(True, description="Augment training patches (the transforms below).")
    p_rotate: float = Field(
        0.2, ge=0, le=1,
        description="Probability of a rotation, applied to the enlarged crop (aug_patch_size) and centre-cropped "
                    "back to the patch; only then is the enlarged crop read.",
    )
    rotation_degrees: float = Field(
        45.0, ge=0, le=180,
        description="Rotation range (+/-) about every axis of an isotropic patch.",
    )
    rotation_degrees_anisotropic: float = Field(
        180.0, ge=0, le=180,
        description="Rotation range (+/-) of an anisotropic patch (an axis > 3x the smallest): about its smallest "
                    "axis only (core's rotation_plane), so a thin z-stack is never tilted.",
    )
    p_scale: float = Field(0.2, ge=0, le=1, description="Probability of a random scaling, a separate affine at patch size.")
    scales: tuple[float, float] = Field((0.7, 1.4), description="Scaling range, drawn per axis (> 1 zooms in).")
    p_anisotropy: float = Field(
        0.1, ge=0, le=1,
        description="Probability of simulated anisotropy (downsample then upsample one axis), on the axes > 3x the "
                    "smallest one, or any axis of an isotropic patch.",
    )
    anisotropy_downsampling: tuple[float, float] = Field((1.0, 1.5), description="Downsampling factor range of the anisotropy.")
    p_flip: float = Field(0.5, ge=0, le=1, description="Probability of a flip, drawn for every axis (a 1-voxel axis never flips).")
    p_bias: float = Field(0.15, ge=0, le=1, description="Probability of a polynomial bias field.")
    bias_coefficients: float = Field(0.2, ge=0, description="Bias field coefficients drawn in +/- this.")
    p_blur: float = Field(0.2, ge=0, le=1, description="Probability of a Gaussian blur.")
    blur_std: tuple[float, float] = Field((0.5, 1.0), description="Blur standard deviation range, in voxels.")
    p_noise: float = Field(0.2, ge=0, le=1, description="Probability of additive Gaussian noise.")
    noise_std: tuple[float, float] = Field((0.0, 0.1), description="Noise standard deviation range (z-scored intensities).")
    p_swap: float = Field(
        0.2, ge=0, le=1,
        description="Probability of swapping pairs of image blocks of patch_size // 8 voxels (labels unchanged).",
    )
    swap_iterations: int = Field(100, ge=1, description="Block pairs swapped (TorchIO's default, as the original).")
    p_gamma: float = Field(0.3, ge=0, le=1, description="Probability of a gamma (contrast) change.")
    log_gamma: tuple[float, float] = Field((-0.35, 0.4), description="Range of log(gamma).")
    preload: bool = Field(False, description="Load every volume in memory instead of memory-mapping it.")

    @model_validator(mode="after")
    def _ordered_ranges(self) -> PatchDatasetParams:
        for name in RANGES:
            low, high = getattr(self, name)
            if low > high:
                raise ValueError(f"{name}: the range ({low}, {high}) is reversed")
        if self.scales[0] <= 0 or self.anisotropy_downsampling[0] < 1 or self.blur_std[0] < 0 or self.noise_std[0] < 0:
            raise ValueError("scales must be > 0, anisotropy_downsampling >= 1, blur_std and noise_std >= 0")
        return self

"""Params models of the MONAI losses and metrics (both are biom3d ``metric`` components). Light: pydantic only."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Activation = Literal["auto", "softmax", "sigmoid"]
ACTIVATION_HELP = (
    "How logits become probabilities. auto: sigmoid for multi-label runs (multilabel: true), "
    "else softmax with label-map targets one-hot encoded (MONAI to_onehot_y)."
)
BACKGROUND_HELP = "Also score the background channel (softmax outputs only: multi-label outputs have none)."


class _ActivationParams(BaseModel):
    model_config = ConfigDict(extra="forbid", defer_build=True)

    activation: Activation = Field("auto", description=ACTIVATION_HELP)


class _DiceLikeParams(_ActivationParams):
    include_background: bool = Field(False, description=BACKGROUND_HELP)
    batch: bool = Field(
        False, description="Sum intersections over the batch before dividing (steadier on small objects)."
    )
    smooth_nr: float = Field(1e-5, ge=0.0, le=1.0, description="Added to the numerator (an empty class then scores 1).")
    smooth_dr: float = Field(1e-5, gt=0.0, le=1.0, description="Added to the denominator (no division by zero).")


class DiceLossParams(_DiceLikeParams):
    squared_pred: bool = Field(False, description="Square predictions and targets in the denominator.")
    jaccard: bool = Field(False, description="Soft Jaccard (IoU) instead of Dice.")


class DiceCELossParams(DiceLossParams):
    lambda_dice: float = Field(1.0, ge=0.0, le=100.0, description="Weight of the Dice term.")
    lambda_ce: float = Field(1.0, ge=0.0, le=100.0, description="Weight of the cross-entropy term (BCE for sigmoid).")
    label_smoothing: float = Field(
        0.0, ge=0.0, le=1.0, description="Label smoothing of the cross-entropy (softmax only)."
    )

    @model_validator(mode="after")
    def _some_weight(self) -> DiceCELossParams:
        if self.lambda_dice == 0 and self.lambda_ce == 0:
            raise ValueError("lambda_dice and lambda_ce are both 0: the loss would be constant")
        return self


class DiceFocalLossParams(DiceLossParams):
    lambda_dice: float = Field(1.0, ge=0.0, le=100.0, description="Weight of the Dice term.")
    lambda_focal: float = Field(1.0, ge=0.0, le=100.0, description="Weight of the focal term.")
    gamma: float = Field(2.0, ge=0.0, le=10.0, description="Focusing exponent; 0 gives cross-entropy.")
    alpha: float | None = Field(None, ge=0.0, le=1.0, description="Focal weight of the positive class (null: none).")

    @model_validator(mode="after")
    def _some_weight(self) -> DiceFocalLossParams:
        if self.lambda_dice == 0 and self.lambda_focal == 0:
            raise ValueError("lambda_dice and lambda_focal are both 0: the loss would be constant")
        return self


class TverskyLossParams(_DiceLikeParams):
    alpha: float = Field(0.5, ge=0.0, le=1.0, description="Weight of false positives.")
    beta: float = Field(0.5, ge=0.0, le=1.0, description="Weight of false negatives (raise it for recall).")


class GeneralizedDiceLossParams(_DiceLikeParams):
    w_type: Literal["square", "simple", "uniform"] = Field(
        "square", description="Class weights from the target volume: 1/v^2, 1/v, or none."
    )


class FocalLossParams(_ActivationParams):
    include_background: bool = Field(True, description=BACKGROUND_HELP + " On by default, as for cross-entropy.")
    gamma: float = Field(2.0, ge=0.0, le=10.0, description="Focusing exponent; 0 gives cross-entropy.")
    alpha: float | None = Field(None, ge=0.0, le=1.0, description="Weight of the positive class (null: none).")


class OverlapMetricParams(_ActivationParams):
    include_background: bool = Field(False, description=BACKGROUND_HELP)


class HausdorffParams(_ActivationParams):
    include_background: bool = Field(False, description=BACKGROUND_HELP)
    percentile: float | None = Field(
        None, ge=0.0, le=100.0, description="Percentile of surface distances instead of the maximum (95: HD95)."
    )
    distance_metric: Literal["euclidean", "chessboard", "taxicab"] = Field("euclidean", description="Surface distance.")
    directed: bool = Field(False, description="Prediction-to-truth distance only, instead of symmetric.")
    physical: bool = Field(
        True, description="Scale by the run's voxel spacing (physical units); off, or without a spacing: voxels."
    )

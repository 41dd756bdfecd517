"""biom3d-models plugin entry: hookimpls and params models only (no heavy imports).

Every ``target`` names a factory ``factory(params, ctx)`` in a torch module of this package; torch is
imported only when a run builds the selected component.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from biom3d.core import hookimpl
from biom3d.core.specs import MetricSpec, ModelSpec, StackSpec

EncoderName = Literal[
    "vgg",
    "efficientnet-b0",
    "efficientnet-b1",
    "efficientnet-b2",
    "efficientnet-b3",
    "efficientnet-b4",
    "efficientnet-b5",
    "efficientnet-b6",
    "efficientnet-b7",
]
Pools = tuple[Annotated[int, Field(ge=0, le=8)], Annotated[int, Field(ge=0, le=8)], Annotated[int, Field(ge=0, le=8)]]
DEFAULT_INNER_LOSS = "models/dice-ce"
ENCODER_NAMES: tuple[str, ...] = get_args(EncoderName)


# -- networks -------------------------------------------------------------------------------------------------
class EncoderParams(BaseModel):
    """What every network of this plugin shares: the encoder and its pooling."""

    model_config = ConfigDict(extra="forbid", defer_build=True)

    encoder: EncoderName = Field("vgg", description="Encoder: 'vgg' (VGG blocks) or 'efficientnet-b0'..'b7'.")
    num_pools: Pools | None = Field(
        None, description="Poolings per axis (D, H, W); default: the run's auto-configured num_pools, else (5, 5, 5)."
    )
    in_channels: int | None = Field(None, ge=1, le=1024, description="Input channels; default: the run's in_channels.")
    norm: Literal["instance", "batch", "group"] = Field("instance", description="Normalisation layer.")
    negative_slope: float = Field(0.01, ge=0, le=1, description="LeakyReLU negative slope of the VGG blocks.")
    base_features: int = Field(
        32, ge=1, le=512, description="VGG encoder: feature maps of the first stage (doubled per stage)."
    )
    max_features: int = Field(
        320, ge=1, le=2048, description="VGG encoder: cap on feature maps per stage (nnU-Net's 320)."
    )
    width_multiplier: float | None = Field(
        None, gt=0, le=4, description="EfficientNet encoder: channel multiplier; default: the variant's (b0: 1.0)."
    )
    depth_multiplier: float | None = Field(
        None, gt=0, le=4, description="EfficientNet encoder: block-repeat multiplier; default: the variant's (b0: 1.0)."
    )


class UNetParams(EncoderParams):
    """The dynamic 3D U-Net."""

    deep_supervision: bool = Field(
        False,
        description="In training mode return one output per decoder stage, full resolution first "
        "(use the 'deep-supervision' loss).",
    )
    out_channels: int | None = Field(
        None,
        ge=1,
        le=1024,
        description="Output channels; default: the run's (num_classes + 1, or num_classes if multilabel).",
    )


class EffUNetParams(UNetParams):
    """The U-Net preset with an EfficientNet encoder."""

    encoder: EncoderName = Field("efficientnet-b0", description="Encoder: 'efficientnet-b0'..'b7' (or 'vgg').")


class ClassifierParams(EncoderParams):
    """An encoder followed by global average pooling and a linear head."""

    num_classes: int | None = Field(None, ge=1, le=100000, description="Output logits; default: the run's num_classes.")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout before the linear head.")


# -- losses and metrics ---------------------------------------------------------------------------------------
class ModeParams(BaseModel):
    """Params of a loss that follows the run's softmax / multi-label mode."""

    model_config = ConfigDict(extra="forbid", defer_build=True)

    multilabel: bool | None = Field(
        None,
        description="Sigmoid outputs with (B, K, D, H, W) multi-label targets (true) or softmax outputs with label "
        "maps (false); default: the run's multilabel.",
    )


class DiceLossParams(ModeParams):
    smooth: float = Field(1e-5, gt=0, le=1e3, description="Added to numerator and denominator of the soft Dice.")
    include_background: bool = Field(False, description="Score the background channel too (softmax only).")
    batch_dice: bool = Field(True, description="Pool voxels of the whole batch per class (nnU-Net), else per image.")


class DiceCEParams(DiceLossParams):
    dice_weight: float = Field(1.0, ge=0, le=1e3, description="Weight of the Dice term.")
    ce_weight: float = Field(1.0, ge=0, le=1e3, description="Weight of the cross-entropy term.")


class DiceBCEParams(BaseModel):
    model_config = ConfigDict(extra="forbid", defer_build=True)

    smooth: float = Field(1e-5, gt=0, le=1e3, description="Added to numerator and denominator of the soft Dice.")
    batch_dice: bool = Field(True, description="Pool voxels of the whole batch per class (nnU-Net), else per image.")
    dice_weight: float = Field(1.0, ge=0, le=1e3, description="Weight of the Dice term.")
    bce_weight: float = Field(1.0, ge=0, le=1e3, description="Weight of the binary cross-entropy term.")


class DiceParams(DiceLossParams):
    role: Literal["auto", "loss", "metric"] = Field(
        "auto",
        description="'metric': hard Dice of discretised predictions (higher is better); 'loss': 1 - soft Dice; "
        "'auto': loss when called on outputs that require gradients, metric otherwise.",
    )


class MetricParams(ModeParams):
    include_background: bool = Field(False, description="Score the background channel too (softmax only).")


class InnerLoss(BaseModel):
    """The loss the deep-supervision wrapper applies at every head, as an envelope."""

    model_config = ConfigDict(extra="forbid", defer_build=True)

    name: str = Field(DEFAULT_INNER_LOSS, min_length=1, description="Qualified id, short name or alias of a loss.")
    params: dict[str, Any] = Field(default_factory=dict, description="The inner loss's own parameters.")

    @model_validator(mode="after")
    def _resolve(self, info: ValidationInfo) -> InnerLoss:
        """Resolve the name and validate the params now, so mistakes surface at config validation with paths."""
        from biom3d.core.discovery import get_registry
        from biom3d.core.registry import ResolutionError

        run = (info.context or {}).get("run")
        try:
            comp = get_registry().resolve("metric", self.name)
        except ResolutionError as exc:  # unknown or ambiguous name
            raise _error(("name",), str(exc), self.name) from None
        if "loss" not in comp.spec.roles:
            raise _error(
                ("name",),
                f"'{comp.qid}' cannot be used as a loss (roles: {', '.join(sorted(comp.spec.roles))})",
                self.name,
            )
        if comp.spec.params is DeepSupervisionParams:
            raise _error(
                ("name",), "deep-supervision cannot wrap itself; name a plain loss such as 'dice-ce'", self.name
            )
        try:
            params = comp.validate_params(self.params, run)
        except ValidationError as exc:
            raise ValidationError.from_exception_data(
                "InnerLoss",
                [
                    InitErrorDetails(
                        type=PydanticCustomError(err["type"], err["msg"]),
                        loc=("params", *err["loc"]),
                        input=err.get("input"),
                    )
                    for err in exc.errors(include_url=False)
                ],
            ) from None
        self.name = comp.qid
        self.params = params.model_dump(mode="json")
        return self


def _error(loc: tuple[str, ...], message: str, value: Any) -> ValidationError:
    detail = InitErrorDetails(type=PydanticCustomError("value_error", message), loc=loc, input=value)
    return ValidationError.from_exception_data("InnerLoss", [detail])


class DeepSupervisionParams(BaseModel):
    model_config = ConfigDict(extra="forbid", defer_build=True)

    loss: InnerLoss = Field(
        default_factory=InnerLoss,
        validate_default=True,
        description="The loss applied to every output, e.g. {name: dice-ce, params: {...}}.",
    )
    weight_factor: float = Field(
        0.5, gt=0, le=1, description="Weight ratio between consecutive heads (nnU-Net: 0.5, halving per stage)."
    )
    skip_lowest: int = Field(
        1, ge=0, le=8, description="Give weight 0 to this many lowest-resolution heads (nnU-Net v2: 1)."
    )


# -- hooks ----------------------------------------------------------------------------------------------------
@hookimpl
def biom3d_models():
    yield ModelSpec(
        name="unet3d-vgg-deep",
        aliases=("UNet3DVGGDeep",),
        target="biom3d.models.unet:build_unet",
        params=UNetParams,
        summary="Dynamic 3D U-Net (VGG encoder, pooling from auto-configuration, optional deep supervision).",
    )
    yield ModelSpec(
        name="effunet3d",
        aliases=("EffUNet",),
        target="biom3d.models.unet:build_unet",
        params=EffUNetParams,
        summary="Dynamic 3D U-Net with a 3D EfficientNet encoder (b0 by default).",
    )
    yield ModelSpec(
        name="vgg3d",
        aliases=("VGG3D",),
        target="biom3d.models.classifier:build_classifier",
        params=ClassifierParams,
        summary="The VGG encoder as a 3D image classifier (global pooling + linear head).",
    )


@hookimpl
def biom3d_metrics():
    loss = frozenset({"loss"})
    yield MetricSpec(
        name="dice-ce",
        target="biom3d.models.losses:build_dice_ce",
        params=DiceCEParams,
        roles=loss,
        higher_is_better=False,
        summary="Soft Dice + cross-entropy (binary CE if multilabel); the default loss.",
    )
    yield MetricSpec(
        name="dice",
        target="biom3d.models.metrics:build_dice",
        params=DiceParams,
        roles=frozenset({"metric", "loss"}),
        higher_is_better=True,
        summary="Dice 2|X∩Y|/(|X|+|Y|): hard per-class score as a metric, 1 - soft Dice as a loss.",
    )
    yield MetricSpec(
        name="iou",
        target="biom3d.models.metrics:build_iou",
        params=MetricParams,
        roles=frozenset({"metric"}),
        higher_is_better=True,
        summary="Intersection over union of discretised predictions, per class and mean.",
    )
    yield MetricSpec(
        name="ce",
        target="biom3d.models.losses:build_ce",
        params=ModeParams,
        roles=loss,
        higher_is_better=False,
        summary="Cross-entropy (softmax), or binary cross-entropy if multilabel.",
    )
    yield MetricSpec(
        name="bce",
        target="biom3d.models.losses:build_bce",
        roles=loss,
        higher_is_better=False,
        summary="Binary cross-entropy on sigmoid outputs (multi-label or binary masks).",
    )
    yield MetricSpec(
        name="dice-bce",
        target="biom3d.models.losses:build_dice_bce",
        params=DiceBCEParams,
        roles=loss,
        higher_is_better=False,
        summary="Soft Dice + binary cross-entropy on sigmoid outputs (multi-label or binary).",
    )
    yield MetricSpec(
        name="mse",
        target="biom3d.models.losses:build_mse",
        params=ModeParams,
        roles=loss,
        higher_is_better=False,
        summary="Mean squared error between probabilities and the one-hot / multi-label target.",
    )
    yield MetricSpec(
        name="deep-supervision",
        target="biom3d.models.deep_supervision:build_deep_supervision",
        params=DeepSupervisionParams,
        roles=loss,
        higher_is_better=False,
        summary="Wraps a loss over deep-supervision outputs, weights halving per stage (nnU-Net).",
    )


# -- stacks ---------------------------------------------------------------------------------------------------
# The original biom3d's defaults (config_default.py of 0.1.2): one output, no deep supervision (USE_DEEP_SUPERVISION
# = False; the network can, with the deep-supervision loss), Dice + CE, images resampled with cubic splines
PAPER_MODEL = {"name": "models/unet3d-vgg-deep", "params": {"deep_supervision": False}}


@hookimpl
def biom3d_stacks():
    yield StackSpec(
        name="paper",
        priority=100,
        summary="The Biom3d paper's method as the original's defaults run it: dynamic 3D U-Net (VGG encoder), "
        "Dice + CE, biom3d-io's foreground-biased patch dataset, core's preprocessor (cubic resampling), trainer "
        "and predictor.",
        extends="core/base",
        components={
            # the original's one z-score over all channels, and its best checkpoint by validation loss
            "preprocessor": {"name": "core/seg-preprocess", "params": {"image_order": 3, "zscore_over": "image"}},
            "trainer": {"name": "core/seg-trainer", "params": {"monitor": "loss"}},
            "dataset": "io/patch-dataset",  # biom3d-io: the stack is offered as the default only with it installed
            "model": PAPER_MODEL,
            "loss": DEFAULT_INNER_LOSS,
            "metrics": ["models/dice", "models/iou"],
        },
        small={"model": {"name": PAPER_MODEL["name"], "params": {**PAPER_MODEL["params"], "base_features": 8}}},
    )

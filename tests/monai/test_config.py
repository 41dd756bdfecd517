"""Network constraints are config-validation errors under model.params, naming the patch size and divisor."""

import pytest

from biom3d.core.config import validate
from biom3d.core.errors import ConfigError


def _raw(model: str, params: dict | None = None, **top) -> dict:
    return {
        "model": {"name": model, "params": params or {}},
        "loss": "dice-ce-loss",
        "metrics": ["dice-metric", "MeanIoU"],
        **top,
    }


def _problems(exc: ConfigError) -> dict[str, str]:
    return {p.path: p.message for p in exc.problems}


@pytest.mark.parametrize(
    ("model", "params", "top", "divisor"),
    [
        ("swin-unetr", {}, {"patch_size": [40, 64, 64]}, "32 on every axis"),
        ("unetr", {}, {"patch_size": [24, 64, 64]}, "16 on every axis"),
        ("basic-unet", {}, {"patch_size": [32, 40, 32]}, "16 on every axis"),
        ("segresnet", {}, {"patch_size": [32, 32, 36]}, "8 on every axis"),
        ("segresnet", {"blocks_down": [1, 1], "blocks_up": [1]}, {"patch_size": [32, 32, 33]}, "2 on every axis"),
        ("dyn-unet", {}, {"patch_size": [20, 64, 64], "num_pools": [3, 5, 5]}, "(8, 32, 32) per axis"),
        ("unet", {}, {"patch_size": [20, 64, 64], "num_pools": [3, 5, 5]}, "(8, 32, 32) per axis"),
        ("attention-unet", {"strides": [2, 2, [1, 2, 2]]}, {"patch_size": [12, 16, 20]}, "(4, 8, 8) per axis"),
    ],
)
def test_patch_not_divisible_is_reported_at_validation(registry, model, params, top, divisor):
    with pytest.raises(ConfigError) as info:
        validate(_raw(model, params, **top), registry=registry)
    problems = _problems(info.value)
    assert list(problems) == ["model.params"], problems
    message = problems["model.params"]
    patch = tuple(top["patch_size"])
    assert f"patch size {patch}" in message and f"divisible by {divisor}" in message


def test_valid_configs_resolve_with_layout_from_the_run(registry):
    cfg = validate(
        _raw("DynUNet", {"base_features": 8}, patch_size=[32, 64, 64], num_pools=[3, 4, 4]), registry=registry
    )
    assert cfg.model.name == "monai/dyn-unet" and cfg.loss.name == "monai/dice-ce-loss"
    assert [m.name for m in cfg.metrics] == ["monai/dice-metric", "monai/mean-iou"]
    assert validate(_raw("swin-unetr", patch_size=[64, 64, 96]), registry=registry).model.params["feature_size"] == 24
    # no patch size yet (auto-configured later): nothing to check against
    assert validate(_raw("unetr"), registry=registry).model.name == "monai/unetr"


@pytest.mark.parametrize(
    ("model", "params", "top", "needle"),
    [
        ("swin-unetr", {"feature_size": 18}, {}, "multiple of 12"),
        ("swin-unetr", {}, {"patch_size": [32, 32, 32]}, "single voxel at the bottleneck"),
        ("unetr", {"hidden_size": 100, "num_heads": 12}, {}, "multiple of num_heads"),
        ("segresnet", {"blocks_up": [1]}, {}, "one entry fewer"),
        ("segresnet", {"init_filters": 12}, {}, "multiple of num_groups"),
        ("unet", {"channels": [8, 16], "strides": [2, 2]}, {}, "one more channel count"),
        ("unet", {"kernel_size": 4}, {}, "must be odd"),
        ("dyn-unet", {"deep_supervision": True, "deep_supr_num": 3}, {"num_pools": [1, 3, 3]}, "deep_supr_num 3"),
    ],
)
def test_other_network_constraints(registry, model, params, top, needle):
    with pytest.raises(ConfigError) as info:
        validate(_raw(model, params, **top), registry=registry)
    assert needle in _problems(info.value)["model.params"]


def test_loss_and_dataset_params_are_checked(registry):
    raw = _raw("unet", loss={"name": "DiceCELoss", "params": {"lambda_dice": 0, "lambda_ce": 0}})
    raw["dataset"] = {"name": "monai-dataset", "params": {"pos": 0, "neg": 0, "flip_prob": 2}}
    raw["metrics"] = [{"name": "hausdorff", "params": {"percentile": 101}}, {"name": "dice-loss"}]
    with pytest.raises(ConfigError) as info:
        validate(raw, registry=registry)
    problems = _problems(info.value)
    assert "both 0" in problems["loss.params"]
    assert "dataset.params.flip_prob" in problems
    assert "metrics[0].params.percentile" in problems
    assert "cannot be used as a metric" in problems["metrics[1].name"]

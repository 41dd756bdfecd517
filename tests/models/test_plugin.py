"""The plugin's announcements: names, aliases, roles, params documentation, and a light entry module."""

import subprocess
import sys

import pytest
from pydantic import BaseModel, ValidationError

import biom3d.models.plugin as models_plugin
from biom3d.core.context import RunContext

MODELS = {"unet3d-vgg-deep": "UNet3DVGGDeep", "effunet3d": "EffUNet", "vgg3d": "VGG3D"}
LOSSES = {"dice-ce", "ce", "bce", "dice-bce", "mse", "deep-supervision"}


def test_entry_module_imports_no_torch():
    code = "import biom3d.models.plugin, sys; assert 'torch' not in sys.modules and 'numpy' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


@pytest.mark.parametrize(("name", "alias"), MODELS.items())
def test_every_model_name_and_alias_resolves_to_the_same_component(registry, name, alias):
    comp = registry.resolve("model", name)
    assert comp.qid == f"models/{name}"
    assert registry.resolve("model", alias) is comp
    assert registry.resolve("model", f"models/{alias}") is comp


def test_metric_roles_and_orientation(registry):
    specs = {c.name: c.spec for c in registry.components("metric") if c.plugin.name == "models"}
    assert set(specs) == LOSSES | {"dice", "iou"}
    for name in LOSSES:
        assert specs[name].roles == {"loss"} and specs[name].higher_is_better is False, name
    assert specs["dice"].roles == {"metric", "loss"} and specs["dice"].higher_is_better is True
    assert specs["iou"].roles == {"metric"} and specs["iou"].higher_is_better is True


def test_every_target_loads_and_every_field_is_documented_and_strict(registry):
    comps = [c for c in registry.components() if c.plugin.name == "models" and c.kind != "stack"]
    assert len(comps) == len(MODELS) + len(LOSSES) + 2
    seen: set[type[BaseModel]] = set()
    for comp in comps:
        assert callable(comp.load()), comp.qid
        todo = [comp.spec.params]
        while todo:
            model = todo.pop()
            if model in seen:
                continue
            seen.add(model)
            assert model.model_config.get("extra") == "forbid", model
            for field_name, field in model.model_fields.items():
                assert field.description, f"{comp.qid}: {model.__name__}.{field_name} has no description"
                ann = field.annotation
                todo += [
                    a for a in (ann, *getattr(ann, "__args__", ())) if isinstance(a, type) and issubclass(a, BaseModel)
                ]
    assert models_plugin.InnerLoss in seen


def test_encoder_names_match_the_encoder_table():
    from biom3d.models.encoders import ENCODERS

    assert set(models_plugin.ENCODER_NAMES) == set(ENCODERS)


@pytest.mark.parametrize(
    ("model", "params"),
    [
        ("unet3d-vgg-deep", {"num_pools": [3, 5, 9]}),
        ("unet3d-vgg-deep", {"num_pools": [3, 5]}),
        ("unet3d-vgg-deep", {"base_features": 0}),
        ("unet3d-vgg-deep", {"norm": "layer"}),
        ("unet3d-vgg-deep", {"encoder": "resnet"}),
        ("effunet3d", {"width_multiplier": 0}),
        ("vgg3d", {"dropout": 1.0}),
        ("vgg3d", {"deep_supervision": True}),
    ],
)
def test_out_of_bounds_params_are_refused(registry, model, params):
    with pytest.raises(ValidationError):
        registry.resolve("model", model).validate_params(params, RunContext())


def test_the_paper_stack_names_this_plugin_and_io_and_extends_core(registry):
    from biom3d.core.stacks import missing_components, stack_envelopes

    paper = registry.resolve("stack", "models/paper")
    envelopes = stack_envelopes(registry, paper)
    # the original biom3d's defaults (config_default.py, 0.1.2): no deep supervision, Dice + CE, cubic resampling,
    # one z-score over all channels, the best checkpoint by validation loss
    assert envelopes["model"] == {"name": "models/unet3d-vgg-deep", "params": {"deep_supervision": False}}
    assert envelopes["loss"] == "models/dice-ce"
    assert envelopes["preprocessor"] == {"name": "core/seg-preprocess",
                                         "params": {"image_order": 3, "zscore_over": "image"}}
    assert envelopes["trainer"] == {"name": "core/seg-trainer", "params": {"monitor": "loss"}}
    assert envelopes["predictor"] == "core/sliding-window"  # from core/base
    # without biom3d-io in this registry the stack is incomplete, and says what is missing
    assert [m.split(":")[0] for m in missing_components(registry, paper)] == ["dataset"]
    small = stack_envelopes(registry, paper, small=True)["model"]
    assert small["params"]["base_features"] == 8 and small["params"]["deep_supervision"] is False

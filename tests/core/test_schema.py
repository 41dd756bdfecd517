import jsonschema
import pytest

from biom3d.core.config import validate
from biom3d.core.schema import config_schema
from tests.core import sample_plugin


@pytest.fixture
def schema(biom3d_plugins):
    biom3d_plugins.register(sample_plugin, name="sample")
    return config_schema()


def test_schema_validates_real_configs(schema, biom3d_plugins):
    jsonschema.Draft202012Validator.check_schema(schema)
    raw = {"num_classes": 2, "model": {"name": "sample/net", "params": {"depth": 3}}, "metrics": ["dice", {"name": "iou"}]}
    jsonschema.validate(raw, schema)
    resolved = validate(raw, registry=biom3d_plugins.registry).model_dump(mode="json")
    jsonschema.validate(resolved, schema)  # a resolved config (as saved in run folders) too
    # the README's forms: the stack's component with params on top, and a callback taken out of the stack's
    stack_forms = {"model": {"params": {"base_features": 16}}, "predictor": {"params": {"tta": False}},
                   "callbacks": ["-snapshots", "early-stopping"]}
    jsonschema.validate(stack_forms, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"metrics": ["-dice"]}, schema)  # only callbacks are added to the stack's


@pytest.mark.parametrize(
    "raw",
    [
        {"model": {"name": "sample/net", "params": {"depth": 99}}},  # out of bounds
        {"model": {"name": "sample/net", "params": {"nrom": "batch"}}},  # unknown param
        {"model": {"name": "no-such-net"}},  # unknown component
        {"loss": "iou"},  # a metric that is not a loss
        {"train": {"epochs": 0}},
    ],
)
def test_schema_rejects_what_validation_rejects(schema, raw):
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(raw, schema)


def test_slots_are_discriminated_on_name(schema):
    defs = schema["$defs"]
    model_variants = [k for k in defs if k.startswith("model__")]
    assert {"model__sample__net", "model__sample__swin"} <= set(model_variants)
    net = defs["model__sample__net"]
    assert set(net["properties"]["name"]["enum"]) == {"sample/net", "net", "Net3D"}
    assert net["properties"]["params"]["$ref"].endswith("NetParams")
    model_slot = schema["properties"]["model"]
    union = next(s for s in model_slot["anyOf"] if "oneOf" in s)
    assert union["discriminator"]["propertyName"] == "name"
    assert "depth" in defs["NetParams"]["properties"] and defs["NetParams"]["properties"]["depth"]["maximum"] == 6

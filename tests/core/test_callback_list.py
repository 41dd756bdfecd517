"""Callbacks a config lists are added to its stack's (checkpoints and logs are callbacks): replacing or removing
is explicit, and a run that would write no checkpoint is refused unless that is explicit too."""

import pytest
import yaml

from biom3d.core.config import validate
from biom3d.core.errors import ConfigError
from tests.core import sample_plugin

DEFAULT = ["core/lr-schedule", "core/checkpoint", "core/csv-log", "core/progress", "core/curves", "core/snapshots"]


@pytest.fixture
def registry(biom3d_plugins):
    return biom3d_plugins.register(sample_plugin, name="sample")


def _names(cfg) -> list[str]:
    return [c.name for c in cfg.callbacks]


def test_listed_callbacks_are_added_to_the_stacks(registry):
    assert _names(validate({}, registry=registry)) == DEFAULT
    cfg = validate({"callbacks": ["early-stopping"]}, registry=registry)
    assert _names(cfg) == [*DEFAULT, "core/early-stopping"]


def test_a_listed_default_changes_its_params_in_place_and_minus_removes(registry):
    cfg = validate({"callbacks": [{"name": "checkpoint", "params": {"every": 5}}, "-snapshots"]}, registry=registry)
    assert _names(cfg) == [n for n in DEFAULT if n != "core/snapshots"]
    assert cfg.callbacks[1].params == {"every": 5, "save_best": True}
    with pytest.raises(ConfigError, match=r"callbacks\[0\]: '-early-stopping' removes nothing"):
        validate({"callbacks": ["-early-stopping"]}, registry=registry)


def test_replacing_is_explicit_and_a_run_without_checkpoints_is_refused(registry):
    cfg = validate({"callbacks_replace": True, "callbacks": ["checkpoint", "csv-log"]}, registry=registry)
    assert _names(cfg) == ["core/checkpoint", "core/csv-log"]
    for raw in ({"callbacks_replace": True, "callbacks": ["csv-log"]}, {"callbacks": ["-checkpoint"]}):
        with pytest.raises(ConfigError, match="callbacks: no callback writes checkpoints.*train.checkpoints: false"):
            validate(raw, registry=registry)
        assert "core/checkpoint" not in _names(validate({**raw, "train": {"checkpoints": False}}, registry=registry))


def test_a_resolved_config_keeps_exactly_its_list(registry):
    cfg = validate({"callbacks": ["-snapshots", "-curves"]}, registry=registry)
    again = validate(yaml.safe_load(cfg.to_yaml()), registry=registry)
    assert again.callbacks_replace is True and _names(again) == _names(cfg) == DEFAULT[:4]


def test_a_stack_adds_its_callbacks_to_the_stack_it_extends(biom3d_plugins):
    from biom3d.core import hookimpl
    from biom3d.core.specs import StackSpec

    class Extending:
        @hookimpl
        def biom3d_stacks(self):
            yield StackSpec(name="more", extends="sample/tiny", priority=20,
                            components={"callbacks": ["core/early-stopping", "-snapshots"]})

    biom3d_plugins.register(sample_plugin, name="sample")
    reg = biom3d_plugins.register(Extending(), name="more")
    assert _names(validate({}, registry=reg)) == [*DEFAULT[:5], "core/early-stopping"]

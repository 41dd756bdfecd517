import pytest
import yaml

from biom3d.core.config import Config, load_config, validate
from biom3d.core.errors import ConfigError
from biom3d.core.upgrades import CURRENT_SCHEMA_VERSION
from tests.core import sample_plugin


@pytest.fixture
def registry(biom3d_plugins):
    return biom3d_plugins.register(sample_plugin, name="sample")


def _paths(exc: ConfigError) -> dict[str, str]:
    return {p.path: p.message for p in exc.problems}


def test_minimal_config_resolves_to_qualified_ids_and_defaults(registry):
    cfg = validate({"num_classes": 2, "model": "Net3D"}, registry=registry)
    assert cfg.model.name == "sample/net"
    assert cfg.model.params == {"num_pools": None, "depth": 4, "norm": "instance"}
    assert cfg.loss.name == "sample/dice-ce"
    assert [m.name for m in cfg.metrics] == ["sample/dice", "sample/iou"]
    assert cfg.callbacks[0].name == "core/lr-schedule"
    assert cfg.train.epochs == 1000 and cfg.train.optimizer == "sgd" and cfg.train.momentum == 0.99
    # the resolved config is itself a valid config and resolves to the same thing
    again = validate(yaml.safe_load(cfg.to_yaml()), registry=registry)
    assert again.model_dump() == cfg.model_dump()


def test_every_problem_is_reported_at_once_with_its_path(registry):
    raw = {
        "num_classes": 0,
        "patch_size": [64, 64],
        "train": {"epochs": -1, "lrr": 0.1, "device": "tpu"},
        "model": {"name": "net", "params": {"num_pools": [3, 5, "x"], "depth": 9, "norms": "batch"}},
        "loss": {"name": "iou"},
        "metrics": [{"name": "dice"}, {"name": "dcie"}],
        "bogus": 1,
    }
    with pytest.raises(ConfigError) as info:
        validate(raw, registry=registry)
    problems = _paths(info.value)
    assert "greater than or equal to 1" in problems["num_classes"]
    assert problems["patch_size[2]"] == "Field required"  # a 2-item tuple where 3 are needed
    assert "train.epochs" in problems
    assert problems["train.lrr"] == "unknown key; did you mean 'lr'?"
    assert "train.device" in problems
    assert "model.params.num_pools[2]" in problems
    assert "model.params.depth" in problems and "(got 9)" in problems["model.params.depth"]
    assert problems["model.params.norms"] == "unknown key; did you mean 'norm'?"
    assert "cannot be used as a loss" in problems["loss.name"]
    assert "Did you mean" in problems["metrics[1].name"] and "'dice'" in problems["metrics[1].name"]
    assert problems["bogus"].startswith("unknown key")
    assert info.value.exit_code == 2
    assert "model.params.num_pools[2]:" in str(info.value)


def test_context_reaches_params_validators(registry):
    with pytest.raises(ConfigError) as info:
        validate({"patch_size": [64, 80, 96], "model": "swin"}, registry=registry)
    assert "must be divisible by 32" in _paths(info.value)["model.params"]
    assert validate({"patch_size": [64, 96, 96], "model": "swin"}, registry=registry).model.name == "sample/swin"


def test_ambiguous_short_name_lists_qualified_candidates(registry, biom3d_plugins):
    import types

    twin = types.ModuleType("twin")
    twin.biom3d_models = sample_plugin.biom3d_models
    reg = biom3d_plugins.register(twin, name="twin")
    with pytest.raises(ConfigError) as info:
        validate({"model": "net"}, registry=reg)
    msg = _paths(info.value)["model.name"]
    assert "ambiguous" in msg and "sample/net" in msg and "twin/net" in msg
    assert validate({"model": "twin/net"}, registry=reg).model.name == "twin/net"


def test_newer_schema_is_refused(registry):
    with pytest.raises(ConfigError, match=f"schema_version 99, newer than the {CURRENT_SCHEMA_VERSION}.*pip install -U"):
        validate({"schema_version": 99}, registry=registry)


def test_v1_fct_kwargs_envelopes_are_upgraded(registry):
    raw = {
        "schema_version": 1,
        "num_classes": 1,
        "model": {"fct": "Net3D", "kwargs": {"depth": 3}},
        "metrics": [{"fct": "dice", "kwargs": None}, {"fct": "iou"}],
    }
    cfg = validate(raw, registry=registry)
    assert cfg.schema_version == CURRENT_SCHEMA_VERSION
    assert cfg.model.name == "sample/net" and cfg.model.params["depth"] == 3
    assert [m.name for m in cfg.metrics] == ["sample/dice", "sample/iou"]
    assert raw["model"] == {"fct": "Net3D", "kwargs": {"depth": 3}}  # the input is not mutated


def test_load_config_reads_yaml_safely_and_resolves_paths(registry, tmp_path):
    (tmp_path / "cfg.yaml").write_text("num_classes: 1\ndata: {images: imgs}\nmodel: !!python/object/apply:os.system ['true']\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "cfg.yaml", registry=registry)
    (tmp_path / "cfg.yaml").write_text("num_classes: 1\ndata: {images: imgs}\n", encoding="utf-8")
    cfg = load_config(tmp_path / "cfg.yaml", registry=registry, overrides={"train.epochs": 3, "train.lr": None})
    assert cfg.train.epochs == 3 and cfg.train.lr == 1e-2
    assert cfg.path(cfg.data.images) == tmp_path.resolve() / "imgs"
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml", registry=registry)


def test_a_bad_value_set_on_the_command_line_is_not_blamed_on_the_file(registry, tmp_path):
    (tmp_path / "cfg.yaml").write_text("num_classes: 1\ntrain: {epochs: two}\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "cfg.yaml", registry=registry, overrides={"train.epochz": 5, "train.lr": None})
    lines = str(info.value).splitlines()
    assert lines[0] == f"invalid config {tmp_path / 'cfg.yaml'}: 2 problems"
    assert any(line.startswith("  train.epochz: unknown key") and line.endswith("(set on the command line)")
               for line in lines)
    assert any(line.startswith("  train.epochs") and "command line" not in line for line in lines)  # the file's


def test_biom3d_run_and_a_config_dict_say_so_too(registry, tmp_path):
    from biom3d.core.builder import Builder
    from biom3d.core.stages.run import run_pipeline

    (tmp_path / "cfg.yaml").write_text("num_classes: 1\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"train.epochz: unknown key.*\(set on the command line\)"):
        run_pipeline(tmp_path / "cfg.yaml", overrides={"train.epochz": 5}, registry=registry)
    with pytest.raises(ConfigError, match=r"train.epochz: unknown key.*\(set on the command line\)"):
        Builder({"num_classes": 1}, overrides={"train.epochz": 5}, registry=registry)
    assert not (tmp_path / "runs").exists()


def test_config_defaults_match_the_paper():
    cfg = Config()
    assert (cfg.train.optimizer, cfg.train.momentum, cfg.train.nesterov, cfg.train.weight_decay) == ("sgd", 0.99, True, 3e-5)
    assert cfg.train.scheduler == "poly"  # the original biom3d's (and nnU-Net's)
    # components are the stack's: the bare config names none, so the core names no other distribution's component
    assert cfg.stack is None and cfg.model is None and cfg.metrics is None


def test_overrides_set_params_of_a_shorthand_envelope_null_and_refuse_a_value_as_a_section():
    from biom3d.core.config import NULL, RESET, apply_overrides

    raw = {"model": "unet3d-vgg-deep", "train": {"epochs": 3, "grad_clip": 1.0, "lr": 0.1}}
    out = apply_overrides(raw, {"model.params.base_features": 8, "train.grad_clip": NULL, "train.lr": RESET,
                                "train.epochs": None})
    assert out == {"model": {"name": "unet3d-vgg-deep", "params": {"base_features": 8}},
                   "train": {"epochs": 3, "grad_clip": None}}
    assert raw["model"] == "unet3d-vgg-deep"  # a copy
    with pytest.raises(ConfigError, match=r"train.epochs: is 3, not a section: train.epochs.x cannot be set"):
        apply_overrides(raw, {"train.epochs.x": 1})

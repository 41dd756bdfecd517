"""Issue 16: `biom3d run` takes every `biom3d train` option with the same definition and meaning, and the
auto-configuration budget flags reach `autoconfig`, `preprocess` and `run` alike. Introspects the commands
(no training) and intercepts the stage functions to see what each flag becomes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer.main
from typer.testing import CliRunner

from biom3d.cli import options as opt
from biom3d.cli.app import app

#: every flag of `train` that sets a config key: (command-line arguments, config key, value it must become)
SAMPLES = {
    "epochs": (["--epochs", "3"], 3),
    "iters_per_epoch": (["--iters-per-epoch", "4"], 4),
    "batch_size": (["--batch-size", "5"], 5),
    "lr": (["--lr", "0.003"], 0.003),
    "fold": (["--fold", "1"], 1),
    "workers": (["--workers", "0"], 0),
    "fp16": (["--no-fp16"], False),
    "device": (["--device", "cpu"], "cpu"),
    "seed": (["--seed", "7"], 7),
    "val_iters": (["--val-iters", "2"], 2),
    "compile": (["--compile"], True),
}
NOT_OVERRIDES = {"config", "resume", "finetune", "runs_dir", "strict_versions", "devices", "gpus",  # handled by
                 "set_"}  # each command


def _params(command: str) -> dict:
    return {p.name: p for p in typer.main.get_command(app).commands[command].params}


def _definition(param) -> tuple:
    fields = ("opts", "secondary_opts", "default", "help", "min", "max", "is_flag", "required")
    descriptor = getattr(param, "type_descriptor", None)
    return (*(getattr(param, f, None) for f in fields), descriptor.annotation if descriptor else None)


def test_run_has_every_train_option_with_the_same_definition():
    train, run = _params("train"), _params("run")
    assert sorted(set(train) - set(run)) == []
    for name, param in train.items():
        if type(param).__name__ == "TyperArgument":  # CONFIG: each command says what its config holds
            assert type(run[name]) is type(param) and run[name].required is param.required is False
            continue
        assert _definition(run[name]) == _definition(param), name


def test_every_train_option_is_a_config_override_or_handled_by_the_command():
    """A flag added to `train` but not to TRAIN_KEYS would be dropped silently by both commands."""
    assert set(_params("train")) == set(opt.TRAIN_KEYS) | NOT_OVERRIDES
    assert set(SAMPLES) == set(opt.TRAIN_KEYS)


def test_budget_and_checkpoint_options_are_shared():
    for command in ("autoconfig", "preprocess", "run"):
        params = _params(command)
        for name in opt.AUTOCONFIG_KEYS:
            assert _definition(params[name]) == _definition(_params("run")[name]), (command, name)
            assert params[name].default is None  # not given: the config's or the function's default stands
    assert _definition(_params("predict")["checkpoint"]) == _definition(_params("run")["checkpoint"])


@pytest.fixture
def captured(monkeypatch, tmp_path):
    """What `train` and `run` hand to core: the overrides and options, instead of training."""
    import biom3d.cli.train_cmd
    import biom3d.core.stages.run as run_stage

    seen: dict[str, dict] = {}

    def fake_pipeline(config, *, overrides, **options):
        seen["run"] = {"config": config, "overrides": overrides, **options}
        return run_stage.PipelineResult(tmp_path)

    def fake_train(config, *, overrides, **options):
        seen["train"] = {"config": config, "overrides": overrides, **options}

    monkeypatch.setattr(run_stage, "run_pipeline", fake_pipeline)
    monkeypatch.setattr(biom3d.cli.train_cmd, "train", fake_train)
    return seen


def _invoke(args: list[str]):
    result = CliRunner().invoke(app, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_each_train_flag_sets_the_same_config_key_on_train_and_run(captured, tmp_path, name):
    args, value = SAMPLES[name]
    config = tmp_path / "c.yaml"
    config.write_text("num_classes: 1\n", encoding="utf-8")
    _invoke(["train", str(config), *args])
    _invoke(["run", str(config), *args])
    assert captured["train"]["overrides"] == {f"train.{name}": value}
    assert captured["run"]["overrides"] == {f"train.{name}": value}


def test_set_reaches_any_key_on_train_and_run_and_the_flags_win(captured, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("num_classes: 1\n", encoding="utf-8")
    args = ["--set", "train.optimizer=adam", "--set", "model.params.channels=[8, 16]", "--set", "train.grad_clip=null",
            "--set", "train.epochs=9", "--epochs", "3", "--set", "stack=models/paper"]
    _invoke(["train", str(config), *args])
    _invoke(["run", str(config), *args])
    from biom3d.core.config import NULL  # null: the key set to None (a None override means "not given")

    expected = {"train.optimizer": "adam", "model.params.channels": [8, 16], "train.grad_clip": NULL,
                "train.epochs": 3, "stack": "models/paper"}
    assert captured["train"]["overrides"] == captured["run"]["overrides"] == expected


def test_resume_takes_only_train_settings_from_set(tmp_path):
    from biom3d.core.errors import InputError

    (tmp_path / "config.yaml").write_text("num_classes: 1\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"only train.. settings change on it \(and data.preprocessed, the new place of its data\), not "
                       "model.params.base_features"):
        CliRunner().invoke(app, ["train", "--resume", str(tmp_path), "--set", "model.params.base_features=8"],
                           catch_exceptions=False)


@pytest.mark.parametrize(("pair", "message"), [
    ("train.optimizer", "give KEY=VALUE"),
    ("=adam", "give KEY=VALUE"),
    ("train..lr=1", "give KEY=VALUE"),
    ("train.lr=[1", "the value is not YAML"),
])
def test_a_malformed_set_names_itself(tmp_path, pair, message):
    from biom3d.core.errors import InputError

    config = tmp_path / "c.yaml"
    config.write_text("num_classes: 1\n", encoding="utf-8")
    with pytest.raises(InputError, match=message) as caught:
        CliRunner().invoke(app, ["train", str(config), "--set", pair], catch_exceptions=False)
    assert repr(pair) in str(caught.value)


def test_run_passes_budget_checkpoint_resume_finetune_and_strict_versions(captured, tmp_path):
    (tmp_path / "images").mkdir()
    _invoke(["run", "-i", str(tmp_path / "images"), "-m", str(tmp_path / "images"), "-k", "2", "--max-dim", "64",
             "--max-pool", "3", "--max-batch", "4", "--checkpoint", "last", "--finetune", str(tmp_path),
             "--strict-versions", "--test-images", "t"])
    seen = captured["run"]
    assert seen["overrides"] == {"num_classes": 2, "autoconfig.max_dim": 64, "autoconfig.max_pool": 3,
                                 "autoconfig.max_batch": 4, "data.test_images": str(Path("t").resolve())}
    assert (seen["checkpoint"], seen["finetune"], seen["strict_versions"]) == ("last", tmp_path, True)

    pipeline = tmp_path / "pipe"
    pipeline.mkdir()
    (pipeline / "config.yaml").write_text("num_classes: 1\n", encoding="utf-8")
    _invoke(["run", "--resume", str(pipeline), "--epochs", "9"])
    seen = captured["run"]
    assert seen["config"] == pipeline / "config.yaml" and seen["folder"] == pipeline.resolve()
    assert seen["overrides"] == {"train.epochs": 9} and seen["checkpoint"] is None


def test_run_names_the_pipeline_after_the_images_folder_as_preprocess_does(captured, tmp_path):
    from biom3d.core.config import safe_name

    for folder, name in (("_imgs", "run-_imgs"), ("my images", "my-images")):
        (tmp_path / folder).mkdir()
        _invoke(["run", "-i", str(tmp_path / folder), "-m", str(tmp_path / folder), "-k", "1"])
        assert captured["run"]["config"]["name"] == name == safe_name(folder)


@pytest.mark.parametrize(("args", "message"), [
    (["CONFIG"], "give no CONFIG"),
    (["--name", "other"], "give no --name or --runs-dir"),
])
def test_run_resume_refuses_what_would_move_the_pipeline(tmp_path, args, message):
    from biom3d.core.errors import InputError

    (tmp_path / "config.yaml").write_text("num_classes: 1\n", encoding="utf-8")
    args = [str(tmp_path / "config.yaml") if a == "CONFIG" else a for a in args]
    with pytest.raises(InputError, match=message):
        CliRunner().invoke(app, ["run", "--resume", str(tmp_path), *args], catch_exceptions=False)


def test_run_resume_of_a_training_run_folder_names_the_command_that_continues_it(tmp_path):
    from biom3d.core.errors import InputError
    from biom3d.core.stages.run import pipeline_folder

    run = tmp_path / "runs" / "x-20240101-000000"
    run.mkdir(parents=True)
    for name in ("config.yaml", "plugins.json"):
        (run / name).write_text("{}", encoding="utf-8")
    with pytest.raises(InputError, match=r"is a training run folder.*biom3d train --resume"):
        pipeline_folder(run)
    with pytest.raises(InputError, match="not a `biom3d run` pipeline folder"):
        pipeline_folder(tmp_path)
    (tmp_path / "config.yaml").write_text("{}", encoding="utf-8")
    (tmp_path / "run").mkdir()
    for name in ("config.yaml", "plugins.json"):
        (tmp_path / "run" / name).write_text("{}", encoding="utf-8")
    assert pipeline_folder(tmp_path / "run") == pipeline_folder(tmp_path) == tmp_path.resolve()


def test_preprocess_hands_the_budget_to_the_stage(monkeypatch, tmp_path):
    import biom3d.core.stages.preprocess as prep

    seen = {}

    class Stop(Exception):
        pass

    def fake(images, masks, out, **kw):
        seen.update(kw)
        raise Stop

    monkeypatch.setattr(prep, "preprocess_dataset", fake)
    with pytest.raises(Stop):
        CliRunner().invoke(app, ["preprocess", "-i", "a", "-m", "b", "-k", "1", "--max-dim", "32", "--max-pool", "3",
                                 "--max-batch", "6"], catch_exceptions=False)
    assert (seen["max_dim"], seen["max_pool"], seen["max_batch"]) == (32, 3, 6)
    seen.clear()
    with pytest.raises(Stop):
        CliRunner().invoke(app, ["preprocess", "-i", "a", "-m", "b", "-k", "1"], catch_exceptions=False)
    assert seen and not {"max_dim", "max_pool", "max_batch"} & set(seen)  # the stage's defaults stand


def test_autoconfig_command_applies_the_budget():
    def plan(*flags: str) -> dict:
        return json.loads(_invoke(["autoconfig", "--median", "16", "24", "24", "--json", *flags]).output)

    default = plan()
    assert default["batch_size"] > 3 and default["num_pools"] == [2, 2, 2]
    capped = plan("--max-batch", "3", "--max-pool", "1")
    assert capped["batch_size"] == 3 and max(capped["num_pools"]) <= 1
    small = plan("--max-dim", "16")
    assert small["patch_size"] == [16, 16, 16] and default["patch_size"] == [16, 24, 24]

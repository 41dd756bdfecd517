"""Which trained runs a `biom3d run` pipeline folder names: its run/, or its fold runs once it cross-validated."""

import json

import pytest

from biom3d.core.errors import InputError
from biom3d.core.runs import fold_run, pipeline_runs, trained_run


def _run(folder):
    folder.mkdir(parents=True)
    (folder / "plugins.json").write_text("{}", encoding="utf-8")
    return folder


def test_fold_runs_come_in_fold_order_and_one_is_chosen_for_export(tmp_path):
    folds = [_run(fold_run(tmp_path, k)) for k in (10, 2, 0, 1)]
    assert pipeline_runs(tmp_path) == [folds[2], folds[3], folds[1], folds[0]]  # fold-2 before fold-10
    with pytest.raises(InputError, match="4 runs, one per fold"):
        trained_run(tmp_path)
    assert trained_run(folds[1]) == folds[1] and pipeline_runs(folds[1]) is None  # a run folder is itself


def test_the_last_training_says_which_runs_a_pipeline_holds(tmp_path):
    single = _run(tmp_path / "run")
    assert pipeline_runs(tmp_path) == [single] and trained_run(tmp_path) == single
    fold = _run(fold_run(tmp_path, 0))  # cross-validation started later: run/ stays the model until it is done
    assert pipeline_runs(tmp_path) == [single]
    (tmp_path / "pipeline.json").write_text(json.dumps({"train": {"done": True, "runs": [str(fold)]}}),
                                            encoding="utf-8")
    assert pipeline_runs(tmp_path) == [fold]
    (tmp_path / "pipeline.json").write_text(json.dumps({"train": {"done": True, "run_dir": str(single)}}),
                                            encoding="utf-8")
    assert pipeline_runs(tmp_path) == [single]  # and back, when a run without it trained last
    assert pipeline_runs(tmp_path / "nothing") is None


def test_a_folder_made_before_a_parameter_existed_is_read_with_its_default():
    """A parameter is added with the old behaviour as its default: a pipeline recorded without it is not
    refused for that, and a real change names the parameter, as --set spells it."""
    from biom3d.core.discovery import get_registry
    from biom3d.core.stages.run import _differences, _with_new_defaults

    registry = get_registry()
    now = {"preprocessor": {"name": "core/seg-preprocess", "params": {"image_order": 3}},
           "autoconfig": {"max_dim": 64}}
    current = {"preprocessor": {"name": "core/seg-preprocess",
                                "params": registry.resolve("preprocessor", "core/seg-preprocess").spec.params(
                                    image_order=3).model_dump(mode="json")},
               "autoconfig": {"max_dim": 64, "max_pool": 5, "max_batch": None}}
    assert _differences(_with_new_defaults(now, registry), current) == []
    current["preprocessor"]["params"]["zscore_over"] = "image"
    assert _differences(_with_new_defaults(now, registry), current) == [
        'preprocessor.params.zscore_over: "channel" -> "image"']
    assert _differences(now, current)[0].startswith("autoconfig: ")  # without the defaults: refused

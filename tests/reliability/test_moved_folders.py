"""Folders moved or copied after training: a `biom3d run` pipeline folder moved whole resumes on its own
preprocessed data, a training run resumes on its data's new place once that is given and proved the same, and
anything else (other data, nothing there) is refused before the run's config.yaml changes."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from biom3d.cli.app import app
from biom3d.core.errors import InputError

TRAIN = ["--iters-per-epoch", "2", "--batch-size", "1", "--val-iters", "1", "--workers", "0", "--no-fp16",
         "--device", "cpu"]


def cli(*args: str | Path) -> None:
    result = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output


def epochs_logged(run_dir: Path) -> list[str]:
    return [line.split(",")[0] for line in (run_dir / "log.csv").read_text(encoding="utf-8").splitlines()[1:]]


def preprocessed_of(run_dir: Path) -> str:
    return yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))["data"]["preprocessed"]


def placed(finished: Path, folder: Path) -> Path:
    """A copy of the pipeline ``finished`` in ``folder``, as if it had run there (its run names its own data)."""
    shutil.copytree(finished, folder)
    config = folder / "run" / "config.yaml"
    config.write_text(config.read_text(encoding="utf-8").replace(str(finished), str(folder)), encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def finished(dataset, tmp_path_factory) -> Path:
    """A finished one-epoch pipeline folder, to copy."""
    root = tmp_path_factory.mktemp("moved")
    config = root / "run.yaml"
    config.write_text(yaml.safe_dump({
        "num_classes": 1, "model": {"params": {"base_features": 4}}, "predictor": {"params": {"tta": False}},
        "data": {"images": str(dataset / "train" / "images"), "masks": str(dataset / "train" / "masks"),
                 "test_images": str(dataset / "test" / "images"), "test_masks": str(dataset / "test" / "masks")},
    }), encoding="utf-8")
    cli("run", config, "--name", "p", "--runs-dir", root / "runs", "--epochs", "1", *TRAIN)
    return root / "runs" / "p"


def test_a_pipeline_folder_moved_whole_resumes_on_its_own_preprocessed_data(finished, dataset, tmp_path, caplog):
    old = placed(finished, tmp_path / "old")
    new = tmp_path / "elsewhere" / "p"
    shutil.move(old, new)

    with caplog.at_level("INFO", logger="biom3d"):
        cli("run", "--resume", new, "--epochs", "2", *TRAIN)
    assert epochs_logged(new / "run") == ["0", "1"]
    assert preprocessed_of(new / "run") == str(new / "preprocessed")
    assert "holds the same data (the pipeline folder moved or was copied)" in caplog.text
    assert not old.exists()  # nothing was written where the folder was
    tests = sorted(p.name for p in (dataset / "test" / "images").iterdir())
    assert tests and sorted(p.name for p in (new / "predictions").iterdir()) == tests


def test_a_copied_pipeline_folder_trains_its_copy_and_leaves_the_original_alone(finished, tmp_path):
    original = placed(finished, tmp_path / "original")
    kept = (original / "run" / "log.csv").read_bytes(), (original / "run" / "config.yaml").read_bytes()
    copy = tmp_path / "copy"
    shutil.copytree(original, copy)

    cli("run", "--resume", copy, "--epochs", "2", *TRAIN)
    assert epochs_logged(copy / "run") == ["0", "1"]
    assert preprocessed_of(copy / "run") == str(copy / "preprocessed")
    assert ((original / "run" / "log.csv").read_bytes(), (original / "run" / "config.yaml").read_bytes()) == kept


def test_a_pipeline_whose_run_trained_on_other_data_is_refused(finished, tmp_path):
    original = placed(finished, tmp_path / "original")
    copy = tmp_path / "copy"
    shutil.copytree(original, copy)
    folds = copy / "preprocessed" / "folds.csv"
    folds.write_text(folds.read_text(encoding="utf-8").replace(",0", ",9", 1), encoding="utf-8")  # another split
    before = (copy / "run" / "config.yaml").read_bytes()

    with pytest.raises(InputError, match=f"was trained on {original / 'preprocessed'}, not on data.preprocessed "
                       rf"{copy / 'preprocessed'} \(folds.csv differs from the run's copy\).*remove {copy} "):
        cli("run", "--resume", copy, "--epochs", "2", *TRAIN)
    assert (copy / "run" / "config.yaml").read_bytes() == before
    assert epochs_logged(copy / "run") == ["0"]


def test_a_moved_run_resumes_on_its_data_once_given_and_proved_the_same(finished, tmp_path, monkeypatch):
    project = placed(finished, tmp_path / "project")
    run, data = tmp_path / "moved" / "run", tmp_path / "moved" / "prep"
    shutil.move(project / "run", run)
    shutil.move(project / "preprocessed", data)
    before = (run / "config.yaml").read_bytes()
    with pytest.raises(InputError, match=r"not there any more.*--set data\.preprocessed=NEW_PLACE"):
        cli("train", "--resume", run, "--epochs", "2", "--device", "cpu")
    assert (run / "config.yaml").read_bytes() == before  # a failed resume changes nothing

    other = tmp_path / "other"
    shutil.copytree(data, other)
    (other / "fingerprint.json").write_text("{}", encoding="utf-8")
    with pytest.raises(InputError, match="fingerprint.json differs from the run's copy"):
        cli("train", "--resume", run, "--epochs", "2", "--device", "cpu", "--set", f"data.preprocessed={other}")
    assert (run / "config.yaml").read_bytes() == before

    with pytest.raises(InputError, match="takes the new place of the run's preprocessed folder"):
        cli("train", "--resume", run, "--epochs", "2", "--device", "cpu", "--set", "data.preprocessed=null")
    (run / "folds.csv").rename(run / "folds.kept")  # without its copy, nothing proves the data the same
    with pytest.raises(InputError, match="the run keeps no copy of its folds.csv to compare with"):
        cli("train", "--resume", run, "--epochs", "2", "--device", "cpu", "--set", f"data.preprocessed={data}")
    (run / "folds.kept").rename(run / "folds.csv")
    assert (run / "config.yaml").read_bytes() == before

    monkeypatch.chdir(tmp_path / "moved")  # a place on the command line is the shell's, not the run folder's
    cli("train", "--resume", run, "--epochs", "2", "--device", "cpu", "--workers", "0", "--set",
        "data.preprocessed=prep")
    assert epochs_logged(run) == ["0", "1"]
    assert preprocessed_of(run) == str(data)


def test_an_extension_that_failed_is_extended_by_the_next_run(finished, tmp_path, monkeypatch):
    from biom3d.core.builder import Builder

    folder = placed(finished, tmp_path / "p")

    def fail(self, run_dir, **kwargs):
        raise RuntimeError("killed")

    with monkeypatch.context() as patch:
        patch.setattr(Builder, "_fit", fail)
        with pytest.raises(RuntimeError, match="killed"):
            cli("run", "--resume", folder, "--epochs", "2", *TRAIN)
    # the run's config.yaml says 2 epochs already: the record must not say the training is done
    cli("run", "--resume", folder, "--epochs", "2", *TRAIN)
    assert epochs_logged(folder / "run") == ["0", "1"]


def test_a_run_that_gave_its_own_folds_is_compared_with_them(finished, tmp_path):
    from biom3d.core.relocation import data_differences

    project = placed(finished, tmp_path / "project")
    run, data = project / "run", project / "preprocessed"
    own = tmp_path / "my_folds.csv"
    own.write_bytes((run / "folds.csv").read_bytes())  # the split the user gave (data.folds): the run's copy
    (data / "folds.csv").write_text("filename,fold\n", encoding="utf-8")  # the folder's own, unused
    preprocessor = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))["preprocessor"]
    assert data_differences(run, data, preprocessor, own) == []
    assert data_differences(run, data, preprocessor) == ["folds.csv differs from the run's copy"]


def test_a_fingerprint_an_earlier_version_wrote_is_the_same_data_when_every_statistic_agrees(finished, tmp_path):
    import json

    from biom3d.core.relocation import data_differences

    project = placed(finished, tmp_path / "project")
    run, data = project / "run", project / "preprocessed"
    preprocessor = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))["preprocessor"]
    copy = json.loads((run / "fingerprint.json").read_text(encoding="utf-8"))
    del copy["spacing_unit"]  # the run trained before spacing_unit; the folder was preprocessed again since
    (run / "fingerprint.json").write_text(json.dumps({**copy, "version": 1}), encoding="utf-8")
    assert data_differences(run, data, preprocessor) == []
    (run / "fingerprint.json").write_text(json.dumps({**copy, "version": 1, "spacing": [9.0, 9.0, 9.0]}),
                                          encoding="utf-8")
    assert data_differences(run, data, preprocessor) == ["fingerprint.json differs from the run's copy"]

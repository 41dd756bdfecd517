"""Readers, writers, run folders and plugin versions behave as configured (a plugin author's walk, issue 10)."""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest

from biom3d.core.errors import DataError, PluginError, RunError
from biom3d.core.stages.predict import predict
from tests.e2e.conftest import TINY


def test_a_chosen_writer_writes_its_own_format_under_its_own_suffix(trained, dataset, tmp_path):
    written = predict([trained.run_dir], dataset / "test" / "images", tmp_path / "out", writer="io/npy",
                      progress=False)
    assert sorted(p.name for p in written) == ["case0.npy", "case1.npy"]
    mask = np.load(written[0])
    assert mask.shape == (16, 24, 24) and set(np.unique(mask)) <= {0, 1}


def test_no_writer_for_the_inputs_format_names_the_writers_and_the_choice(trained, tmp_path):
    source = tmp_path / "in"
    source.mkdir()
    np.save(source / "case0.npy", np.zeros((16, 24, 24), np.float32))
    (source / "case0.npy").rename(source / "case0.tiny")  # a format only a (missing) plugin would read
    from biom3d.core import hookimpl
    from biom3d.core.discovery import discover
    from biom3d.core.specs import ReaderSpec

    class TinyReader:
        @hookimpl
        def biom3d_readers(self):
            from biom3d.core.imagedata import ImageData

            yield ReaderSpec(name="tiny", suffixes=(".tiny",),
                             target=lambda params, ctx: lambda path: ImageData(np.load(path, allow_pickle=False)))

    registry = discover(extra=[("tinyseg", TinyReader())])
    with pytest.raises(DataError, match=r"cannot write the prediction of .*case0.tiny: no writer for .*'.tiny' files"
                       r".*installed writers: .*io/npy \(.npy\).*choose one with `writer:` in the config or --writer"):
        predict([trained.run_dir], source, tmp_path / "out", registry=registry, progress=False)
    assert not (tmp_path / "out").exists()  # refused before any work
    written = predict([trained.run_dir], source, tmp_path / "out", writer="io/npy", registry=registry,
                      progress=False)
    assert [p.name for p in written] == ["case0.npy"]


def test_a_train_that_fails_while_building_leaves_no_run_folder(prepared, tmp_path):
    from biom3d.core import hookimpl
    from biom3d.core.builder import Builder
    from biom3d.core.discovery import discover
    from biom3d.core.specs import ModelSpec

    class Broken:
        @hookimpl
        def biom3d_models(self):
            yield ModelSpec(name="net", target="biom3d_no_such_module.nets:build")

    registry = discover(extra=[("tinyseg", Broken())])
    runs = tmp_path / "runs"
    with pytest.raises(PluginError, match="model 'tinyseg/net'.*could not load 'biom3d_no_such_module.nets:build'"):
        Builder(prepared.config_path, registry=registry,
                overrides={**TINY, "model": "tinyseg/net"}).train(runs_dir=runs)
    assert runs.is_dir() and list(runs.iterdir()) == []  # nothing `biom3d predict runs/*` could take for a run


def test_a_run_without_checkpoint_is_explained_to_predict(trained, tmp_path):
    run = tmp_path / "killed"
    shutil.copytree(trained.run_dir, run)
    shutil.rmtree(run / "checkpoints")
    with pytest.raises(RunError, match=r"holds no checkpoint: its training failed or was stopped.*--resume"):
        predict([trained.run_dir, run], tmp_path, tmp_path / "out", progress=False)


def _recorded(run, plugin: str, version: str):
    record = json.loads((run / "plugins.json").read_text(encoding="utf-8"))
    record["used"][plugin]["version"] = version
    (run / "plugins.json").write_text(json.dumps(record), encoding="utf-8")


def test_other_plugin_versions_warn_once_each_and_strict_refuses(trained, dataset, tmp_path, caplog):
    run = tmp_path / "run"
    shutil.copytree(trained.run_dir, run)
    _recorded(run, "models", "0.0.1")
    with caplog.at_level(logging.WARNING, logger="biom3d"):
        predict([run], dataset / "test" / "images" / "case0.tif", tmp_path / "out", progress=False)
    warned = [r.getMessage() for r in caplog.records if "the run used 0.0.1" in r.getMessage()]
    assert len(warned) == 1 and "models (biom3d-models)" in warned[0] and "0.1.0 is installed" in warned[0]
    with pytest.raises(PluginError, match=r"other plugin versions \(--strict-versions\): models.*0.0.1") as info:
        predict([run], dataset / "test" / "images", tmp_path / "out2", strict_versions=True, progress=False)
    assert info.value.exit_code == 3


def test_a_blocked_plugin_is_reported_as_blocked_not_missing(trained, tmp_path):
    from biom3d.core.discovery import discover

    registry = discover(environ={"BIOM3D_DISABLE_PLUGINS": "models"})
    with pytest.raises(PluginError, match="plugin 'models' .* is installed but blocked .*BIOM3D_DISABLE_PLUGINS") as info:
        predict([trained.run_dir], tmp_path, tmp_path / "out", registry=registry, progress=False)
    assert "pip install" not in str(info.value)


def test_a_chosen_reader_settles_a_tie_in_every_stage(dataset, tmp_path):
    import yaml

    from biom3d.core import hookimpl
    from biom3d.core.discovery import discover, get_registry
    from biom3d.core.specs import ReaderSpec
    from biom3d.core.stages.evaluate import evaluate
    from biom3d.core.stages.preprocess import preprocess_dataset

    tiff = get_registry().reader_for("a.tif").spec

    class Twin:
        @hookimpl
        def biom3d_readers(self):
            yield ReaderSpec(name="tiff", target=tiff.target, suffixes=(".tif",), priority=tiff.priority)

    registry = discover(extra=[("twin", Twin())])
    masks = dataset / "test" / "masks"
    with pytest.raises(DataError, match=r"case0.tif: readers io/tiff, twin/tiff claim this format at the same priority"):
        evaluate(masks, masks, registry=registry)
    assert evaluate(masks, masks, reader="twin/tiff", registry=registry).mean("dice") == 1.0
    prep = preprocess_dataset(dataset / "train" / "images", dataset / "train" / "masks", tmp_path / "prep",
                              num_classes=1, workers=0, progress=False, reader="twin/tiff", registry=registry)
    assert yaml.safe_load(prep.config_path.read_text(encoding="utf-8"))["reader"] == {"name": "twin/tiff", "params": {}}

"""Issue 11, tracebacks: every failure is one paragraph naming what and where, with the right exit code."""

from __future__ import annotations

import os
import pickle
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from biom3d.core.errors import ConfigError, DataError, RunError
from tests.reliability.conftest import cli

LEGACY = Path(__file__).resolve().parents[1] / "fixtures" / "legacy" / "default_unet.yaml"


def _one_paragraph(stderr: str) -> str:
    """The error of a CLI's stderr (from its ``error:`` line on), checked to be one paragraph, no traceback."""
    assert "Traceback" not in stderr, stderr[-2000:]
    lines = stderr.rstrip().splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("error: ")]
    assert len(starts) == 1, stderr[-2000:]
    paragraph = lines[starts[0]:]
    assert all(line.strip() for line in paragraph), stderr[-2000:]
    return "\n".join(paragraph)


# 4 ---------------------------------------------------------------------------------------------------------
def _train_args(prepared, runs_dir: Path) -> list[str]:
    flags = {"--epochs": 1, "--iters-per-epoch": 1, "--batch-size": 1, "--val-iters": 1, "--workers": 0}
    return ["train", str(prepared.config_path), "--runs-dir", str(runs_dir),
            *[str(x) for kv in flags.items() for x in kv]]


def _assert_nothing_partial(files: dict[str, str]) -> None:
    """Every file left under a final name reads back whole; no temporary is left."""
    assert all(state == "ok" for state in files.values()), {k: v for k, v in files.items() if v != "ok"}
    assert not [f for f in files if ".tmp" in Path(f).name], list(files)


def test_read_only_outputs_are_one_paragraph_exit_2(confined, dataset, prepared, trained, tmp_path):
    ro = tmp_path / "ro"
    images, masks = dataset / "train" / "images", dataset / "train" / "masks"
    cases = [
        ["preprocess", "-i", str(images), "-m", str(masks), "-k", "1", "-o", str(ro / "prep"), "--workers", "0"],
        _train_args(prepared, ro / "runs"),
        ["predict", str(trained.run_dir), "-i", str(dataset / "test" / "images"), "-o", str(ro / "pred")],
        ["eval", "-p", str(masks), "-t", str(masks), "--csv", str(ro / "eval.csv")],
    ]
    results = confined(cases, readonly=[ro])
    for case in results:
        line = _one_paragraph(case["stderr"])
        assert case["rc"] == 2, (case["argv"][0], case["stderr"][-1500:])
        assert "read-only file system" in line and str(ro) in line, line
    assert not results[-1]["files"]  # nothing could be written, and nothing was


def test_a_full_disk_is_one_paragraph_exit_1_and_leaves_no_partial_file(confined, dataset, prepared, trained,
                                                                        tmp_path):
    prep, runs, pred = tmp_path / "full-prep", tmp_path / "full-runs", tmp_path / "full-pred"
    images, masks = dataset / "train" / "images", dataset / "train" / "masks"
    cases = [
        ["preprocess", "-i", str(images), "-m", str(masks), "-k", "1", "-o", str(prep / "out"), "--workers", "0"],
        _train_args(prepared, runs),
        ["predict", str(trained.run_dir), "-i", str(dataset / "test" / "images"), "-o", str(pred / "out")],
    ]
    # preprocess fills a 40 KiB disk part-way through its cases, training at its first checkpoint (87 KB);
    # prediction finds its disk full
    results = confined(cases, tmpfs={prep: 40 * 1024, runs: 48 * 1024, pred: 64 * 1024}, fill=[pred])
    for case in results:
        line = _one_paragraph(case["stderr"])
        assert case["rc"] == 1, (case["argv"][0], case["stderr"][-1500:])
        assert "no space left" in line and "free" in line, line
    written = results[0]["files"]
    assert any("/images/" in f for f in written), "the disk should fill part-way, after some cases"
    _assert_nothing_partial(written)
    _assert_nothing_partial(results[1]["files"])
    _assert_nothing_partial(results[2]["files"])


# 5 ---------------------------------------------------------------------------------------------------------
def test_channels_are_checked_against_the_run_before_predicting(trained, tmp_path):
    import tifffile

    from biom3d.core.stages.predict import predict

    two = tmp_path / "two"
    two.mkdir()
    np.save(two / "rgb.npy", np.random.default_rng(0).normal(size=(2, 8, 16, 16)).astype(np.float32))
    with pytest.raises(DataError, match=r"rgb.npy: 2 channel\(s\).*trained on 1 \(in_channels\)"):
        predict([trained.run_dir], two, tmp_path / "out2", progress=False)
    assert not (tmp_path / "out2").exists() or not any((tmp_path / "out2").iterdir())

    small = tmp_path / "small"
    small.mkdir()
    with warnings.catch_warnings():  # tifffile's notice that it stores such data as RGB(A) planes: the point
        warnings.simplefilter("ignore", DeprecationWarning)
        tifffile.imwrite(small / "tiny.tif", np.random.default_rng(1).normal(size=(4, 8, 8)).astype(np.float32))
    assert tifffile.TiffFile(small / "tiny.tif").series[0].axes[0] in "CS"  # a bare TIFF calls it channels
    written = predict([trained.run_dir], small, tmp_path / "out1", progress=False)
    assert tifffile.imread(written[0]).shape == (4, 8, 8)  # one channel, four slices, as the run expects


# 6 ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("edit", "key"), [
    ("NB_EPOCHS: ten", "NB_EPOCHS"),
    ("NB_EPOCHS: [1, 2]", "NB_EPOCHS"),
    ("NUM_CLASSES: !!python/tuple [1, 2]", "NUM_CLASSES"),
    ("MEDIAN_SPACING: 0.5", "MEDIAN_SPACING"),
])
def test_legacy_import_names_the_key_of_a_bad_value(tmp_path, edit, key):
    (tmp_path / "old.yaml").write_text(LEGACY.read_text(encoding="utf-8") + f"\n{edit}\n", encoding="utf-8")  # a repeated key: the last one wins
    proc = cli("config", "import", str(tmp_path / "old.yaml"))
    line = _one_paragraph(proc.stderr)
    assert proc.returncode == 2 and f"{key}: expected" in line, line


def test_legacy_import_of_a_list_where_a_mapping_belongs(tmp_path):
    from biom3d.cli.legacy import import_legacy, read_legacy_yaml

    original = read_legacy_yaml(LEGACY)
    for key in ("MODEL", "TRAIN_DATASET", "TRAIN_LOSS"):
        bad = {**original, key: [1, 2]}
        with pytest.raises(ValueError, match=rf"^{key}\b.*expected a .*got \[1, 2\]"):
            import_legacy(bad)
        bad = {**original, key: {**original[key], "kwargs": [1, 2]}}
        with pytest.raises(ValueError, match=rf"^{key}.kwargs: expected a mapping"):
            import_legacy(bad)


# 7 ---------------------------------------------------------------------------------------------------------
def test_a_100k_deep_yaml_is_refused_not_a_recursion_error(tmp_path):
    from biom3d.cli.legacy import read_legacy_yaml
    from biom3d.core.config import read_yaml

    deep = tmp_path / "deep.yaml"
    deep.write_text("data: " + "[" * 100_000 + "]" * 100_000 + "\n", encoding="utf-8")
    for read in (read_yaml, read_legacy_yaml):
        with pytest.raises(ConfigError, match="levels deep"):
            read(deep)
    proc = cli("config", "validate", str(deep))
    assert proc.returncode == 2 and "levels deep" in _one_paragraph(proc.stderr) + proc.stderr


# 15 --------------------------------------------------------------------------------------------------------
class _Payload:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_a_hostile_checkpoint_is_refused_in_one_paragraph(dataset, trained, tmp_path):
    import shutil

    import torch

    from biom3d.core.checkpoints import load_checkpoint, load_weights

    run = tmp_path / "run"
    shutil.copytree(trained.run_dir, run)
    for name in ("best.pt", "last.pt", "last-prev.pt"):
        (run / "checkpoints" / name).unlink(missing_ok=True)
    with open(run / "checkpoints" / "best.pt", "wb") as f:
        torch.save({"model": {}, "x": _Payload()}, f)
    with open(tmp_path / "plain.pkl", "wb") as f:
        pickle.dump({"model": _Payload()}, f, protocol=2)
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        for path, expected in ((run / "checkpoints" / "best.pt", "unsafe"), (tmp_path / "plain.pkl", "not a biom3d")):
            with pytest.raises(RunError) as info:
                load_checkpoint(path)
            message = str(info.value)
            assert expected in message and str(path) in message
            assert "\n" not in message and len(message) < 500 and "weights_only" not in message
        with pytest.raises(RunError, match="unsafe"):
            load_weights(run)
    finally:
        os.chdir(cwd)
    assert not (tmp_path / "pwned").exists()

    proc = cli("predict", str(run), "-i", str(dataset / "test" / "images"), "-o", str(tmp_path / "out"))
    line = _one_paragraph(proc.stderr)
    assert proc.returncode == 1 and "unsafe" in line and "weights_only" not in proc.stderr


# 16 --------------------------------------------------------------------------------------------------------
def _bomb(levels: int) -> str:
    lines = ["a0: &a0 [" + ", ".join(["lol"] * 9) + "]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, levels + 1)]
    model = f"MODEL: {{fct: UNet3DVGGDeep, kwargs: {{junk: *a{levels}}}}}"
    return "\n".join(["NUM_CLASSES: 1", *lines, model]) + "\n"


@pytest.mark.parametrize("command", [["config", "import"], ["config", "validate"]])
def test_an_alias_bomb_is_refused_quickly_at_every_yaml_entry_point(tmp_path, command):
    (tmp_path / "bomb.yaml").write_text(_bomb(10), encoding="utf-8")
    start = time.perf_counter()
    proc = cli(*command, str(tmp_path / "bomb.yaml"), timeout=60)
    assert time.perf_counter() - start < 20
    line = _one_paragraph(proc.stderr)
    assert proc.returncode == 2 and "expands to more than" in line + proc.stderr
    assert len(proc.stderr) < 2000


def test_legacy_notes_stay_short_whatever_the_dropped_value(tmp_path):
    from biom3d.cli.legacy import import_legacy, read_legacy_yaml

    original = read_legacy_yaml(LEGACY)
    huge = {**original, "MODEL": {**original["MODEL"], "kwargs": {**original["MODEL"]["kwargs"],
                                                                  "junk": [list(range(1000))] * 50}}}
    huge.update({f"EXTRA_{i}": "x" * 10_000 for i in range(100)})
    _, notes = import_legacy(huge)
    assert max(len(n) for n in notes) < 2000
    assert any("junk=" in n for n in notes) and any("EXTRA_0" in n and "more" in n for n in notes)

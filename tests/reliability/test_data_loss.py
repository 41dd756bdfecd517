"""Issue 11, data loss: nothing of the user's is replaced without --overwrite; outputs keep the umask."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest

from biom3d.core.atomic import atomic_write_text
from biom3d.core.errors import DataError, InputError
from tests.reliability.conftest import cli, preprocess


# 1 ---------------------------------------------------------------------------------------------------------
def test_preprocess_refuses_a_folder_holding_the_users_files(dataset, tmp_path):
    out = tmp_path / "mine"
    (out / "images").mkdir(parents=True)
    (out / "config.yaml").write_text("my: own config\n", encoding="utf-8")
    mine = np.arange(10.0)
    np.save(out / "images" / "case0.npy", mine)

    proc = cli("preprocess", "-i", str(dataset / "train" / "images"), "-m", str(dataset / "train" / "masks"),
               "-k", "1", "-o", str(out), "--workers", "0")
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "--overwrite" in proc.stderr and "config.yaml" in proc.stderr
    assert (out / "config.yaml").read_text(encoding="utf-8") == "my: own config\n"
    assert np.array_equal(np.load(out / "images" / "case0.npy"), mine)
    assert sorted(p.name for p in out.rglob("*")) == ["case0.npy", "config.yaml", "images"]  # nothing added

    result = preprocess(dataset, out, overwrite=True)  # asked for: replaced
    assert result.processed == 4 and np.load(out / "images" / "case0.npy").ndim == 4


def test_preprocess_resumes_its_own_folder_and_refuses_another_datas(dataset, prepared, tmp_path):
    again = preprocess(dataset, prepared.out_dir)
    assert (again.processed, again.skipped) == (0, 4)
    with pytest.raises(DataError, match="other inputs or settings.*--overwrite"):
        preprocess(dataset, prepared.out_dir, params={"norm": "ct"})
    (tmp_path / "empty").mkdir()
    assert preprocess(dataset, tmp_path / "empty").processed == 4  # an empty folder is fine


def test_preprocess_resumes_its_folder_written_by_an_earlier_version_and_refuses_other_statistics(dataset, prepared,
                                                                                                   tmp_path, caplog):
    import json
    import shutil

    from biom3d.core.stages.preprocess_folder import fingerprint_hash

    def as_earlier(folder, **statistics):
        """The folder as a version before spacing_unit and plan_from existed wrote it."""
        fingerprint = json.loads((folder / "fingerprint.json").read_text(encoding="utf-8"))
        del fingerprint["spacing_unit"]
        fingerprint.update(version=1, **statistics)
        (folder / "fingerprint.json").write_text(json.dumps(fingerprint, indent=2), encoding="utf-8")
        record = json.loads((folder / "preprocess.json").read_text(encoding="utf-8"))
        del record["params"]["plan_from"]
        record["fingerprint"] = fingerprint_hash(fingerprint)
        (folder / "preprocess.json").write_text(json.dumps(record, indent=2), encoding="utf-8")
        return record

    earlier = shutil.copytree(prepared.out_dir, tmp_path / "earlier")
    record = as_earlier(earlier)
    with caplog.at_level("INFO", logger="biom3d"):
        again = preprocess(dataset, earlier)
    assert (again.processed, again.skipped) == (0, 4)
    assert "preprocessed by an earlier biom3d" in caplog.text
    now = json.loads((earlier / "preprocess.json").read_text(encoding="utf-8"))
    assert now["params"]["plan_from"] == "stored" and now["fingerprint"] != record["fingerprint"]
    assert json.loads((earlier / "fingerprint.json").read_text(encoding="utf-8"))["spacing_unit"] == "um"

    other = shutil.copytree(prepared.out_dir, tmp_path / "other")
    as_earlier(other, spacing=[9.0, 9.0, 9.0])  # another statistic: another data's folder
    with pytest.raises(DataError, match="differs in: fingerprint"):
        preprocess(dataset, other)


# 2 ---------------------------------------------------------------------------------------------------------
def test_eval_refuses_to_replace_an_existing_csv(dataset, tmp_path):
    from biom3d.core.stages.evaluate import evaluate

    truth = dataset / "train" / "masks"
    table = tmp_path / "results.csv"
    table.write_text("my,own,table\n", encoding="utf-8")
    with pytest.raises(InputError, match="results.csv already exists.*--overwrite"):
        evaluate(truth, truth, csv_path=table)
    assert table.read_text(encoding="utf-8") == "my,own,table\n"

    proc = cli("eval", "-p", str(truth), "-t", str(truth), "--csv", str(table))
    assert proc.returncode == 2 and "already exists" in proc.stderr and "Traceback" not in proc.stderr
    assert table.read_text(encoding="utf-8") == "my,own,table\n"

    proc = cli("eval", "-p", str(truth), "-t", str(truth), "--csv", str(table), "--overwrite")
    assert proc.returncode == 0, proc.stderr
    assert table.read_text(encoding="utf-8").splitlines()[0] == "file,class,dice,iou"


def test_config_schema_refuses_to_replace_an_existing_file(tmp_path):
    target = tmp_path / "schema.json"
    target.write_text("mine\n", encoding="utf-8")
    proc = cli("config", "schema", "-o", str(target))
    assert proc.returncode == 2 and "--overwrite" in proc.stderr and target.read_text(encoding="utf-8") == "mine\n"
    assert cli("config", "schema", "-o", str(target), "--overwrite").returncode == 0
    assert target.read_text(encoding="utf-8").startswith("{")


# 3 ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002])
def test_atomic_outputs_get_the_mode_the_umask_gives(tmp_path, umask):
    from biom3d.core.checkpoints import save_checkpoint
    from biom3d.core.context import RunContext
    from biom3d.core.discovery import get_registry

    writer = get_registry().resolve("writer", "io/tiff").build({}, RunContext())
    previous = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "table.csv", "a,b\n")
        writer(tmp_path / "mask.tif", np.zeros((2, 4, 4), np.uint8), None)
        save_checkpoint(tmp_path / "last.pt", {"model": {}})
    finally:
        os.umask(previous)
    for name in ("table.csv", "mask.tif", "last.pt"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o666 & ~umask, name


def test_cleaning_one_prediction_shards_temporaries_spares_another_shards_file_of_the_same_name(tmp_path):
    """BIDS-like outputs (sub-01/T1w.nii.gz, sub-02/T1w.nii.gz) predicted by two shards: one starting later
    removes only its own targets' temporaries, not the one the other shard is writing."""
    from biom3d.core.atomic import remove_stale_temporaries

    ours, theirs = tmp_path / "sub-01" / "T1w.nii.gz", tmp_path / "sub-02" / "T1w.nii.gz"
    stale = ours.parent / ".T1w.nii.gz.abcd1234.tmp.nii.gz"
    writing = theirs.parent / ".T1w.nii.gz.efgh5678.tmp.nii.gz"
    for path in (stale, writing):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"partial")
    assert remove_stale_temporaries(tmp_path, targets=[ours]) == 1
    assert not stale.exists() and writing.exists()
    assert remove_stale_temporaries(tmp_path, names=["T1w.nii.gz"]) == 1 and not writing.exists()  # by name: both

import pytest

from biom3d.core.errors import DataError
from biom3d.core.folds import make_folds, num_folds_for, read_folds, write_folds
from biom3d.core.scan import scan_dataset, scan_folder
from tests.core import sample_plugin


def test_fold_counts_follow_the_paper():
    assert [num_folds_for(n) for n in (2, 3, 5, 9, 10, 100)] == [2, 2, 2, 4, 5, 5]


def test_folds_are_balanced_deterministic_and_order_independent(tmp_path):
    names = [f"case{i:02d}.npy" for i in range(23)]
    folds = make_folds(names, seed=7)
    assert folds == make_folds(list(reversed(names)), seed=7)
    assert folds != make_folds(names, seed=8)
    counts = sorted(list(folds.values()).count(k) for k in range(5))
    assert counts == [4, 4, 5, 5, 5]
    write_folds(tmp_path / "folds.csv", folds)
    train, val = read_folds(tmp_path / "folds.csv", 2)
    assert sorted(train + val) == names and set(val) == {n for n, f in folds.items() if f == 2}
    with pytest.raises(DataError, match=r"fold 7 is not in .*folds: \[0, 1, 2, 3, 4\]"):
        read_folds(tmp_path / "folds.csv", 7)
    with pytest.raises(ValueError):
        make_folds(["one.npy"])


@pytest.fixture
def registry(biom3d_plugins):
    return biom3d_plugins.register(sample_plugin, name="sample")


def _touch(root, *names):
    for n in names:
        p = root / n
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")


def test_pairs_by_name_across_formats_and_subfolders(registry, tmp_path):
    _touch(tmp_path / "img", "a.tif", "sub/b.ome.tif")
    _touch(tmp_path / "msk", "a.tiff", "sub/b.tif")
    (tmp_path / "img" / "series").mkdir()
    _touch(tmp_path / "img" / "series", "1.dcm", "2.dcm")
    _touch(tmp_path / "msk", "series.tif")
    cases = scan_dataset(tmp_path / "img", tmp_path / "msk", registry)
    assert [(c.key, c.image.reader, c.mask.reader) for c in cases] == [
        ("a", "sample/tiff-fast", "sample/tiff"),
        ("series", "sample/dicom", "sample/tiff-fast"),
        ("sub/b", "sample/ome-tiff", "sample/tiff-fast"),
    ]


def test_every_pairing_problem_in_one_error(registry, tmp_path):
    _touch(tmp_path / "img", "a.tif", "b.tif", "c.tif")
    _touch(tmp_path / "msk", "a.tif", "d.tif")
    with pytest.raises(DataError) as info:
        scan_dataset(tmp_path / "img", tmp_path / "msk", registry)
    msg = str(info.value)
    assert "image b.tif has no mask" in msg and "image c.tif has no mask" in msg and "mask d.tif has no image" in msg


def test_duplicates_unknown_files_empty_and_missing_folders(registry, tmp_path):
    _touch(tmp_path / "img", "a.tif", "a.tiff", "notes.xyz", "eval.csv")
    with pytest.raises(DataError) as info:
        scan_folder(tmp_path / "img", registry)
    assert "same name 'a'" in str(info.value) and "notes.xyz: no reader" in str(info.value) and "eval.csv" not in str(info.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no image files"):
        scan_folder(tmp_path / "empty", registry)
    with pytest.raises(DataError, match="does not exist"):
        scan_folder(tmp_path / "missing", registry)


def test_prediction_names_keep_relative_path_and_format(tmp_path):
    from biom3d.core.scan import Item
    from biom3d.core.stages.predict import output_name

    (tmp_path / "patient-7").mkdir()
    assert output_name(Item("patient-7", tmp_path / "patient-7", "io/dicom")) == "patient-7.nii.gz"
    assert output_name(Item("sub/img", tmp_path / "sub" / "img.ome.tif", "io/ome-tiff")) == "sub/img.ome.tif"
    assert output_name(Item("case_01", tmp_path / "case_01.NII.GZ", "io/sitk")) == "case_01.NII.GZ"

import json
import shutil

import numpy as np
import pytest
import yaml

from biom3d.core.errors import DataError, PluginError
from biom3d.core.stages.evaluate import evaluate, scores
from biom3d.core.stages.predict import predict
from tests.e2e.conftest import SHAPE, SPACING


def _read(path):
    from biom3d.core.discovery import get_registry

    reg = get_registry()
    return reg.reader_for(path).build({}, None)(path)


def test_predict_writes_masks_with_the_input_metadata_and_evaluates(trained, dataset, tmp_path):
    out = tmp_path / "pred"
    written = predict([trained.run_dir], dataset / "test" / "images", out, progress=False)
    assert sorted(p.name for p in written) == ["case0.tif", "case1.tif"]
    pred = _read(out / "case0.tif")
    assert pred.array.shape == SHAPE and pred.spacing == pytest.approx(SPACING)
    assert set(np.unique(pred.array)) <= {0, 1}
    report = evaluate(out, dataset / "test" / "masks", csv_path=tmp_path / "eval.csv")
    assert report.classes == [1] and len(report.rows) == 2
    assert 0.0 <= report.mean("dice") <= 1.0
    assert (tmp_path / "eval.csv").read_text(encoding="utf-8").splitlines()[0] == "file,class,dice,iou"
    with pytest.raises(DataError, match="already exist.*--overwrite"):
        predict([trained.run_dir], dataset / "test" / "images", out, progress=False)


def test_an_output_folder_inside_the_input_is_not_read_as_input(trained, dataset, tmp_path):
    images = shutil.copytree(dataset / "test" / "images", tmp_path / "images")
    first = predict([trained.run_dir], images, images / "pred", progress=False)
    again = predict([trained.run_dir], images, images / "pred", skip_existing=True, progress=False)
    assert sorted(p.name for p in first) == ["case0.tif", "case1.tif"] and again == []  # not pred/case0.tif...
    assert sorted(p.relative_to(images).as_posix() for p in images.rglob("*.tif")) == [
        "case0.tif", "case1.tif", "pred/case0.tif", "pred/case1.tif"]


def test_tta_and_ensemble_change_probabilities_not_the_format(trained, dataset, tmp_path):
    from biom3d.core.discovery import get_registry
    from biom3d.core.stages.loading import load_run
    from biom3d.core.stages.predict import predict_image

    reg = get_registry()
    image = _read(dataset / "test" / "images" / "case0.tif")
    with_tta = predict_image([load_run(trained.run_dir, registry=reg)], image)
    without = predict_image([load_run(trained.run_dir, registry=reg, tta=False)], image)
    assert with_tta.shape == without.shape == (2, *SHAPE)
    assert np.allclose(with_tta.sum(0), 1, atol=1e-4) and not np.allclose(with_tta, without)
    both = predict_image([load_run(trained.run_dir, registry=reg), load_run(trained.run_dir, registry=reg, tta=False)], image)
    assert np.allclose(both, (with_tta + without) / 2, atol=1e-5)  # an ensemble averages probabilities
    written = predict([trained.run_dir, trained.run_dir], dataset / "test" / "images" / "case1.tif", tmp_path / "ens",
                      tta=False, progress=False)
    assert [p.name for p in written] == ["case1.tif"]


def test_an_ensemble_of_runs_that_post_process_differently_warns_and_uses_the_first_runs(trained, dataset, tmp_path,
                                                                                           caplog):
    import logging

    def copy(name, postprocessors):
        run = shutil.copytree(trained.run_dir, tmp_path / name)
        config = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))
        config["postprocessors"] = postprocessors
        (run / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
        return run

    spelled_out = copy("spelled-out", [{"name": "discretize", "params": {"threshold": 0.5}}])  # the default, written
    largest = copy("largest", [{"name": "core/discretize"}, {"name": "core/keep-largest"}])
    image = dataset / "test" / "images" / "case0.tif"
    with caplog.at_level(logging.WARNING, logger="biom3d"):
        predict([trained.run_dir, spelled_out], image, tmp_path / "same", tta=False, progress=False)
        assert not caplog.records  # the same post-processing, however it is written
        predict([trained.run_dir, largest], image, tmp_path / "mixed", tta=False, progress=False)
    (record,) = caplog.records
    assert "core/keep-largest" in record.getMessage() and "uses the first run's" in record.getMessage()
    mixed, same = (np.asarray(_read(tmp_path / d / "case0.tif").array) for d in ("mixed", "same"))
    assert np.array_equal(mixed, same)  # the first run's post-processing, not the second's


def test_nifti_metadata_round_trip(trained, tmp_path, caplog):
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(np.random.default_rng(0).random(SHAPE).astype(np.float32))
    img.SetSpacing((0.5, 0.5, 2.0))
    img.SetOrigin((10.0, -4.0, 3.5))
    img.SetDirection((0, 1, 0, 1, 0, 0, 0, 0, -1))
    (tmp_path / "in" / "sub").mkdir(parents=True)
    sitk.WriteImage(img, str(tmp_path / "in" / "sub" / "vol.nii.gz"))
    with caplog.at_level("WARNING", logger="biom3d"):
        predict([trained.run_dir], tmp_path / "in", tmp_path / "out", tta=False, progress=False)
    # 0.5 x 0.5 x 2 "mm" beside a run trained at 0.5 x 0.5 x 2 µm: micrometres under NIfTI's default unit
    assert "the values look like µm under the wrong unit and are taken as µm" in caplog.text
    out = sitk.ReadImage(str(tmp_path / "out" / "sub" / "vol.nii.gz"))
    assert out.GetSize() == img.GetSize()
    assert out.GetSpacing() == pytest.approx(img.GetSpacing())
    assert out.GetOrigin() == pytest.approx(img.GetOrigin())
    assert out.GetDirection() == pytest.approx(img.GetDirection())


def test_a_run_needing_a_missing_plugin_fails_up_front(trained, tmp_path):
    import json
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained.run_dir, run)
    record = json.loads((run / "plugins.json").read_text(encoding="utf-8"))
    record["used"]["acme"] = {"dist": "biom3d-acme", "version": "0.3.1", "components": ["acme/net"]}
    (run / "plugins.json").write_text(json.dumps(record), encoding="utf-8")
    with pytest.raises(PluginError, match=r"plugin 'acme' \(biom3d-acme 0.3.1\) is not installed.*pip install 'biom3d-acme==0.3.1'"):
        predict([run], tmp_path, tmp_path / "out", progress=False)


def test_eval_pairs_by_name_not_order(tmp_path):
    from tests.e2e.conftest import write_tiff

    a = np.zeros(SHAPE, np.uint8)
    a[2:6, 2:6, 2:6] = 1
    b = np.zeros(SHAPE, np.uint8)
    b[8:12, 8:16, 8:16] = 1
    write_tiff(tmp_path / "pred" / "zeta.tif", a * 255)  # 0/255 prediction
    write_tiff(tmp_path / "pred" / "alpha.tif", b)
    write_tiff(tmp_path / "truth" / "alpha.tif", b)
    write_tiff(tmp_path / "truth" / "zeta.tif", a)
    report = evaluate(tmp_path / "pred", tmp_path / "truth")
    assert report.mean("dice") == 1.0 and report.mean("iou") == 1.0
    write_tiff(tmp_path / "truth" / "omega.tif", a)
    with pytest.raises(DataError, match="ground truth omega.tif has no prediction"):
        evaluate(tmp_path / "pred", tmp_path / "truth")
    (tmp_path / "truth" / "omega.tif").unlink()
    write_tiff(tmp_path / "truth" / "zeta.tif", np.zeros((16, 24, 20), np.uint8))
    with pytest.raises(DataError, match="differ in shape"):
        evaluate(tmp_path / "pred", tmp_path / "truth")


@pytest.mark.parametrize("calibrated", [False, True], ids=["no-spacing", "imagej-spacing"])
def test_2d_images_go_through_the_whole_pipeline(tmp_path, calibrated):
    """(H, W) images: preprocessed as (1, 1, H, W), trained with a 1-voxel depth, predicted back as (H, W);
    a calibrated one's (y, x) spacing gets a z (it failed: two spacing values for three axes)."""
    import tifffile

    from biom3d.core.builder import Builder
    from biom3d.core.stages.preprocess import preprocess_dataset

    rng = np.random.default_rng(0)
    y, x = np.indices((48, 48))
    for split, n in (("train", 3), ("test", 1)):
        for i in range(n):
            mask = np.zeros((48, 48), np.uint8)
            for c in rng.integers(8, 40, (3, 2)):
                mask[(y - c[0]) ** 2 + (x - c[1]) ** 2 < 36] = 1
            for kind, arr in (("img", (mask * 2 + rng.normal(0, 0.5, mask.shape)).astype(np.float32)), ("msk", mask)):
                (tmp_path / split / kind).mkdir(parents=True, exist_ok=True)
                calibration = {"imagej": True, "resolution": (2.0, 2.0), "metadata": {"unit": "um", "axes": "YX"}}
                tifffile.imwrite(tmp_path / split / kind / f"c{i}.tif", arr, **(calibration if calibrated else {}))
    prep = preprocess_dataset(tmp_path / "train" / "img", tmp_path / "train" / "msk", tmp_path / "prep",
                              num_classes=1, workers=0, progress=False)
    assert prep.plan["patch_size"][0] == 1 and prep.plan["num_pools"][0] == 0
    overrides = {"train.epochs": 1, "train.iters_per_epoch": 3, "train.workers": 0, "train.batch_size": 2,
                 "model.params.base_features": 4}
    run = Builder(prep.config_path, overrides=overrides).train(runs_dir=tmp_path / "runs").run_dir
    written = predict([run], tmp_path / "test" / "img", tmp_path / "pred", progress=False,
                      probabilities=tmp_path / "probs")
    assert tifffile.imread(written[0]).shape == (48, 48)
    assert np.load(tmp_path / "probs" / "c0.npz")["probabilities"].shape == (2, 48, 48)  # (C, H, W), as the mask
    if calibrated:
        assert prep.fingerprint["spacing"] == [1.0, 0.5, 0.5]
        with tifffile.TiffFile(written[0]) as tif:  # the mask keeps the image's calibration
            x = tif.pages[0].tags["XResolution"].value
            assert x[0] / x[1] == pytest.approx(2.0)


def test_multichannel_images_with_multilabel_masks(tmp_path):
    """(C, D, H, W) images and 4D multi-label masks: sigmoid outputs, threshold, one score per class."""
    from biom3d.core.builder import Builder
    from biom3d.core.stages.preprocess import preprocess_dataset

    rng = np.random.default_rng(0)
    z, y, x = np.indices((12, 24, 24))
    for split, n in (("train", 3), ("test", 1)):
        for i in range(n):
            mask = np.zeros((2, 12, 24, 24), np.uint8)
            for k in range(2):
                for c in rng.integers([3, 5, 5], [9, 19, 19], (2, 3)):
                    mask[k][(z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2 < 12] = 1
            image = (mask * 2 + rng.normal(0, 0.4, mask.shape)).astype(np.float32)
            for kind, arr in (("img", image), ("msk", mask)):
                (tmp_path / split / kind).mkdir(parents=True, exist_ok=True)
                np.save(tmp_path / split / kind / f"c{i}.npy", arr)
    prep = preprocess_dataset(tmp_path / "train" / "img", tmp_path / "train" / "msk", tmp_path / "prep",
                              num_classes=2, multilabel=True, workers=0, progress=False)
    assert prep.fingerprint["in_channels"] == 2 and prep.fingerprint["channel_axis"] == [0]
    assert np.load(tmp_path / "prep" / "masks" / "c0.npy").shape == (2, 12, 24, 24)
    overrides = {"train.epochs": 1, "train.iters_per_epoch": 3, "train.workers": 0, "train.batch_size": 2,
                 "model.params.base_features": 4}
    result = Builder(prep.config_path, overrides=overrides).train(runs_dir=tmp_path / "runs")
    assert {"val_dice_1", "val_dice_2"} <= set(result.history[0])  # classes 1..K, as `biom3d eval` numbers them
    written = predict([result.run_dir], tmp_path / "test" / "img", tmp_path / "pred", progress=False)
    pred = np.load(written[0])
    assert pred.shape == (2, 12, 24, 24) and set(np.unique(pred)) <= {0, 1}
    assert evaluate(tmp_path / "pred", tmp_path / "test" / "msk").classes == [1, 2]


def _old_style_run(trained, tmp_path):
    """A copy of the run whose config names overlap 0.5 and tta true, as runs saved before those params were
    nullable do: `--fast` must still choose its own overlap and flips there."""
    import shutil

    import yaml

    run = tmp_path / "old-run"
    shutil.copytree(trained.run_dir, run)
    config = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))
    config["predictor"]["params"].update(overlap=0.5, tta=True)
    (run / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    return run


def test_fast_mode_chooses_its_overlap_and_flips_even_where_the_run_config_names_them(trained, tmp_path):
    from biom3d.core.builtins.predictor import FAST, PLAIN
    from biom3d.core.discovery import get_registry
    from biom3d.core.stages.loading import load_run

    reg = get_registry()
    for run in (trained.run_dir, _old_style_run(trained, tmp_path)):
        plain = load_run(run, registry=reg).predictor
        assert (plain.overlap, plain.tta, plain.grow_stride) == (PLAIN["overlap"], PLAIN["tta"], None)
        fast = load_run(run, registry=reg, fast=True).predictor
        assert (fast.overlap, fast.tta) == (FAST["overlap"], FAST["tta"]) and fast.grow_stride is not None
        given = load_run(run, registry=reg, fast=True, tta=True, overlap=0.4).predictor  # the command line wins
        assert (given.overlap, given.tta) == (0.4, True) and given.grow_stride is not None
        off = load_run(run, registry=reg, fast=False).predictor
        assert (off.overlap, off.tta, off.grow_stride) == (PLAIN["overlap"], PLAIN["tta"], None)


def test_cli_fast_flag_predicts_what_the_stage_does_in_fast_mode(trained, dataset, tmp_path):
    from typer.testing import CliRunner

    from biom3d.cli.app import app

    images = dataset / "test" / "images"
    predict([trained.run_dir], images, tmp_path / "stage", fast=True, progress=False)
    predict([trained.run_dir], images, tmp_path / "plain", progress=False)
    result = CliRunner().invoke(app, ["predict", str(trained.run_dir), "--input", str(images), "--output",
                                      str(tmp_path / "cli"), "--fast", "--device", "cpu"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in (tmp_path / "stage").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "cli").iterdir()) and names
    for name in names:
        fast = np.asarray(_read(tmp_path / "cli" / name).array)
        assert np.array_equal(fast, np.asarray(_read(tmp_path / "stage" / name).array))
        assert fast.shape == np.asarray(_read(tmp_path / "plain" / name).array).shape


def test_fast_on_a_predictor_without_a_fast_mode_is_an_input_error_naming_it():
    from types import SimpleNamespace

    from biom3d.core.errors import InputError
    from biom3d.core.specs import Params
    from biom3d.core.stages.loading import predictor_overrides

    class NoFast(Params):
        overlap: float = 0.5

    spec = SimpleNamespace(qid="acme/tiles", spec=SimpleNamespace(params=NoFast))
    with pytest.raises(InputError, match=r"--fast: predictor 'acme/tiles' has no fast mode.*overlap"):
        predictor_overrides(spec, tta=None, overlap=None, fast=True)
    assert predictor_overrides(spec, tta=None, overlap=0.3, fast=None) == {"tta": None, "overlap": 0.3}


def test_eval_without_num_classes_reads_the_classes_of_the_whole_dataset(tmp_path):
    """A file of a three-class set holding only label 2 is class 2, not a binary mask (it was scored as class 1)."""
    from tests.e2e.conftest import write_tiff

    many = np.zeros(SHAPE, np.uint8)
    many[2:6, 2:6, 2:6], many[8:12, 8:12, 8:12], many[1:3, 12:16, 12:16] = 1, 2, 3
    only_two = np.zeros(SHAPE, np.uint8)
    only_two[4:10, 4:10, 4:10] = 2
    for side in ("pred", "truth"):
        write_tiff(tmp_path / side / "many.tif", many)
        write_tiff(tmp_path / side / "two.tif", only_two)
    report = evaluate(tmp_path / "pred", tmp_path / "truth")
    assert report.classes == [1, 2, 3]
    assert all(row["dice"] == 1.0 for row in report.rows)  # a prediction equal to its truth, class by class
    wrong = only_two.copy()
    wrong[wrong == 2] = 1  # the right region under the wrong class
    write_tiff(tmp_path / "pred" / "two.tif", wrong)
    rows = {(r["file"], r["class"]): r["dice"] for r in evaluate(tmp_path / "pred", tmp_path / "truth").rows}
    assert rows[("two", 2)] == 0.0 and rows[("two", 1)] == 0.0 and rows[("many", 2)] == 1.0


def test_eval_distances_are_in_the_files_spacing_and_an_empty_prediction_is_left_out(tmp_path):
    from typer.testing import CliRunner

    from biom3d.cli.app import app
    from tests.e2e.conftest import write_tiff

    pred, truth = np.zeros(SHAPE, np.uint8), np.zeros(SHAPE, np.uint8)
    pred[4, 10, 10], truth[6, 10, 10] = 1, 1  # 2 slices apart: 2 x 2.0 um along z
    write_tiff(tmp_path / "pred" / "near.tif", pred)
    write_tiff(tmp_path / "truth" / "near.tif", truth)
    write_tiff(tmp_path / "pred" / "missed.tif", np.zeros(SHAPE, np.uint8))  # the nucleus not found at all
    write_tiff(tmp_path / "truth" / "missed.tif", truth)
    report = evaluate(tmp_path / "pred", tmp_path / "truth", distances=True, csv_path=tmp_path / "eval.csv")
    rows = {r["file"]: r for r in report.rows}
    assert rows["near"]["hd95"] == pytest.approx(2 * SPACING[0]) and rows["near"]["unit"] == "um"
    assert np.isnan(rows["missed"]["hd95"]) and rows["missed"]["dice"] == 0.0
    assert report.mean("hd95") == pytest.approx(4.0) and report.undefined("hd95") == 1  # not a NaN mean
    assert report.mean("dice") == 0.0  # the missed file still counts in Dice
    lines = (tmp_path / "eval.csv").read_text(encoding="utf-8").splitlines()
    assert lines[0] == "file,class,dice,iou,hd95,assd,unit" and lines[1].startswith("missed,1,0.000000,0.000000,nan")
    assert lines[-1] == "mean,all,0.000000,0.000000,4.000000,4.000000,um"
    out = CliRunner().invoke(app, ["eval", "--pred", str(tmp_path / "pred"), "--truth", str(tmp_path / "truth"),
                                   "--distances"])
    assert out.exit_code == 0, out.output
    assert "mean HD95 4.0000  mean ASSD 4.0000  (um; 1 file-class pair(s) with one mask empty left out)" in out.output
    plain = evaluate(tmp_path / "pred", tmp_path / "truth")  # without --distances: the table as before
    assert plain.metrics == ("dice", "iou") and "hd95" not in plain.rows[0] and "HD95" not in plain.table()


def test_eval_reads_multilabel_masks_in_the_layout_each_writer_stores(tmp_path):
    """biom3d's TIFF writer stores a multi-label mask as ImageJ's ZCYX, its NIfTI writer as ZYXC: both are scored
    against a CZYX NumPy truth class by class (they were compared axis for axis: refused, or wrong numbers)."""
    from biom3d.core.context import RunContext
    from biom3d.core.discovery import get_registry
    from biom3d.core.imagedata import ImageData

    rng = np.random.default_rng(0)
    truth = (rng.random((2, *SHAPE)) > 0.7).astype(np.uint8)
    pred = truth.copy()
    pred[1, :4] = 1 - pred[1, :4]  # class 2 wrong on its first four slices
    registry, ctx = get_registry(), RunContext(num_classes=2, multilabel=True)
    reference = ImageData(np.zeros(SHAPE, np.float32), spacing=(2.0, 0.5, 0.5))
    (tmp_path / "truth").mkdir()
    np.save(tmp_path / "truth" / "a.npy", truth)
    expected = [scores(pred[k] > 0, truth[k] > 0)["dice"] for k in range(2)]
    assert expected[0] == 1.0 and expected[1] < 0.9
    for suffix in (".tif", ".nii.gz"):
        target = tmp_path / suffix / f"a{suffix}"
        target.parent.mkdir()
        registry.writer_for(target).build({}, ctx)(target, pred, reference)
        report = evaluate(target.parent, tmp_path / "truth")
        assert report.classes == [1, 2], suffix
        assert [r["dice"] for r in sorted(report.rows, key=lambda r: r["class"])] == pytest.approx(expected), suffix


def test_a_label_map_truth_is_scored_against_a_multilabel_prediction_channel_by_label(tmp_path):
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, SHAPE).astype(np.uint8)  # 0, 1, 2
    pred = np.stack([labels == 1, labels == 2]).astype(np.uint8)
    pred[0, :3] = 0  # class 1 missed on its first three slices
    for folder, name, array in (("pred", "a.npy", pred), ("truth", "a.npy", labels)):
        (tmp_path / folder).mkdir(exist_ok=True)
        np.save(tmp_path / folder / name, array)
    expected = [scores(pred[0] > 0, labels == 1)["dice"], 1.0]
    for pred_dir, truth_dir in (("pred", "truth"), ("truth", "pred")):  # either side may be the label map
        report = evaluate(tmp_path / pred_dir, tmp_path / truth_dir)
        assert report.classes == [1, 2]
        assert [r["dice"] for r in sorted(report.rows, key=lambda r: r["class"])] == pytest.approx(expected)
    np.save(tmp_path / "truth" / "a.npy", np.where(labels == 2, 3, labels).astype(np.uint8))
    with pytest.raises(DataError, match=r"ground truth .*a.npy holds label 3, but the mask .* has 2 channels"):
        evaluate(tmp_path / "pred", tmp_path / "truth")


def test_a_nifti_in_millimetres_is_predicted_like_the_micron_tiff_it_was_made_from(trained, dataset, tmp_path, caplog):
    """The run was trained on TIFFs in µm; SimpleITK reads NIfTI in mm. The same voxels must give the same mask,
    not one resampled 1000-fold."""
    from biom3d.core.discovery import get_registry

    tiff = dataset / "test" / "images" / "case0.tif"
    image = _read(tiff)
    nifti = tmp_path / "in" / "case0.nii.gz"
    nifti.parent.mkdir()
    get_registry().writer_for(nifti).build({}, None)(nifti, np.asarray(image.array), image)
    read_back = _read(nifti)
    assert read_back.meta["unit"] == "mm" and read_back.spacing == pytest.approx([s / 1000 for s in SPACING])
    from_tiff = predict([trained.run_dir], tiff, tmp_path / "tif", progress=False)
    with caplog.at_level("WARNING", logger="biom3d"):
        from_nifti = predict([trained.run_dir], nifti, tmp_path / "nii", progress=False)
    assert "no length unit" not in caplog.text
    expected, got = _read(from_tiff[0]).array, _read(from_nifti[0]).array
    assert np.asarray(got).shape == SHAPE and np.array_equal(np.asarray(got), np.asarray(expected))
    assert json.loads((trained.run_dir / "fingerprint.json").read_text(encoding="utf-8"))["spacing_unit"] == "um"

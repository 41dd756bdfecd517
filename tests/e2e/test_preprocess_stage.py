import json

import numpy as np
import pytest
import tifffile
import yaml

from biom3d.core.errors import DataError
from biom3d.core.stages.preprocess import preprocess_dataset
from tests.e2e.conftest import SHAPE, blobs, make_dataset, write_tiff


def test_outputs_layout_and_config(prepared):
    out = prepared.out_dir
    names = sorted(p.name for p in (out / "images").iterdir())
    assert names == [f"case{i}.npy" for i in range(4)]
    image = np.load(out / "images" / "case0.npy")
    mask = np.load(out / "masks" / "case0.npy")
    # resampled from spacing (2, 0.5, 0.5) to the median spacing (unchanged here), channel axis added
    assert image.shape == (1, *SHAPE) and image.dtype == np.float32 and mask.shape == SHAPE
    assert abs(float(image.mean())) < 1e-4 and set(np.unique(mask)) == {0, 1}  # z-scored, 0/255 fixed
    with np.load(out / "fg" / "case0.npz") as fg:
        assert (mask[tuple(fg["1"].T)] == 1).all()
    fp = json.loads((out / "fingerprint.json").read_text(encoding="utf-8"))
    assert fp["spacing"] == [2.0, 0.5, 0.5] and fp["median_shape"] == list(map(float, SHAPE))
    assert fp["spacing_unit"] == "um"  # the TIFF reader's
    folds = (out / "folds.csv").read_text(encoding="utf-8").splitlines()
    assert folds[0] == "filename,fold" and len(folds) == 5 and {r.split(",")[1] for r in folds[1:]} == {"0", "1"}
    cfg = yaml.safe_load(prepared.config_path.read_text(encoding="utf-8"))
    assert cfg["patch_size"] == list(prepared.plan["patch_size"]) and cfg["data"]["preprocessed"] == "."
    assert cfg["stack"] == prepared.stack == "models/paper"  # the default stack with every plugin installed
    assert any("relabelled" in w for w in prepared.warnings)


def test_rerun_skips_done_cases_and_refuses_other_data(prepared, dataset):
    again = preprocess_dataset(dataset / "train" / "images", dataset / "train" / "masks", prepared.out_dir,
                               num_classes=1, workers=0, progress=False)
    assert (again.processed, again.skipped) == (0, 4)
    with pytest.raises(DataError, match="other inputs or settings.*--overwrite"):
        preprocess_dataset(dataset / "train" / "images", dataset / "train" / "masks", prepared.out_dir,
                           num_classes=1, workers=0, progress=False, params={"norm": "ct"})


def test_interrupted_run_resumes_without_half_files(tmp_path, dataset):
    out = tmp_path / "prep"
    first = preprocess_dataset(dataset / "train" / "images", dataset / "train" / "masks", out, num_classes=1,
                               workers=0, progress=False)
    (out / "images" / "case2.npy").unlink()  # as if killed before the last write of this case
    again = preprocess_dataset(dataset / "train" / "images", dataset / "train" / "masks", out, num_classes=1,
                               workers=0, progress=False)
    assert (first.processed, again.processed, again.skipped) == (4, 1, 3)
    assert not list(out.rglob("*.tmp"))


def test_parallel_workers_give_the_same_result(tmp_path, dataset, prepared, monkeypatch):
    from biom3d.core.stages import preprocess

    monkeypatch.setattr(preprocess, "IN_PROCESS_BYTES", 0)  # small data runs in-process otherwise
    out = tmp_path / "prep"
    preprocess_dataset(dataset / "train" / "images", dataset / "train" / "masks", out, num_classes=1, workers=2,
                       progress=False)
    for name in ("case0.npy", "case3.npy"):
        assert np.array_equal(np.load(out / "images" / name), np.load(prepared.out_dir / "images" / name))


def test_single_image_is_split_into_train_and_validation(tmp_path):
    root = make_dataset(tmp_path / "one", n_train=1, n_test=0)
    res = preprocess_dataset(root / "train" / "images", root / "train" / "masks", tmp_path / "prep", num_classes=1,
                             workers=0, progress=False)
    rows = dict(line.split(",") for line in (res.out_dir / "folds.csv").read_text(encoding="utf-8").splitlines()[1:])
    assert rows == {"case0-train.npy": "1", "case0-val.npy": "0"}
    train = np.load(res.out_dir / "images" / "case0-train.npy")
    val = np.load(res.out_dir / "images" / "case0-val.npy")
    # the paper's split: the first quarter of a longest axis validates, the rest trains
    assert train.shape[1:] == (16, 18, 24) and val.shape[1:] == (16, 6, 24)
    whole = np.concatenate([np.load(res.out_dir / "masks" / f"case0-{part}.npy") for part in ("val", "train")], axis=1)
    assert np.array_equal(whole, tifffile.imread(root / "train" / "masks" / "case0.tif") > 0)


@pytest.mark.parametrize(
    "case, message",
    [
        ("empty", "holds no image files"),
        ("no_mask", "image extra.tif has no mask"),
        ("shape", "does not match its image's"),
        ("nan", "NaN or infinite"),
        ("truncated", "extra.tif"),
        ("flat", "a 2D image in a 3D dataset"),
        ("labels", "300 grey levels"),
    ],
)
def test_bad_inputs_get_one_clear_error_and_nothing_written(tmp_path, case, message):
    root = make_dataset(tmp_path / "d", n_train=2, n_test=0)
    images, masks = root / "train" / "images", root / "train" / "masks"
    rng = np.random.default_rng(1)
    if case == "empty":
        images = tmp_path / "nothing"
        images.mkdir()
    elif case == "no_mask":
        write_tiff(images / "extra.tif", rng.random(SHAPE).astype(np.float32))
    elif case == "shape":
        write_tiff(images / "extra.tif", rng.random(SHAPE).astype(np.float32))
        write_tiff(masks / "extra.tif", np.zeros((16, 24, 20), np.uint8))
    elif case == "nan":
        bad = rng.random(SHAPE).astype(np.float32)
        bad[0, 0, 0] = np.nan
        write_tiff(images / "extra.tif", bad)
        write_tiff(masks / "extra.tif", np.zeros(SHAPE, np.uint8))
    elif case == "truncated":
        write_tiff(images / "extra.tif", rng.random(SHAPE).astype(np.float32))
        data = (images / "extra.tif").read_bytes()
        (images / "extra.tif").write_bytes(data[: len(data) // 3])
        write_tiff(masks / "extra.tif", np.zeros(SHAPE, np.uint8))
    elif case == "flat":
        write_tiff(images / "extra.tif", rng.random(SHAPE[1:]).astype(np.float32))
        write_tiff(masks / "extra.tif", np.zeros(SHAPE[1:], np.uint8))
    elif case == "labels":
        write_tiff(images / "extra.tif", rng.random(SHAPE).astype(np.float32))
        write_tiff(masks / "extra.tif", (np.arange(np.prod(SHAPE)).reshape(SHAPE) % 300).astype(np.uint16))
    out = tmp_path / "out"
    with pytest.raises(DataError, match=message) as info:
        preprocess_dataset(images, masks, out, num_classes=1, workers=0, progress=False)
    assert info.value.exit_code == 2
    assert not (out / "images").exists()


def test_default_stack_follows_what_is_installed():
    from biom3d.core.config import validate
    from biom3d.core.discovery import discover
    from biom3d.core.stacks import choose_stack

    everything = discover()
    assert choose_stack(everything, None).qid == "models/paper"
    monai_only = discover(environ={"BIOM3D_PLUGINS": "monai"})
    assert choose_stack(monai_only, None).qid == "monai/dynunet"
    cfg = validate({"num_classes": 1}, registry=monai_only)
    assert (cfg.stack, cfg.model.name, cfg.dataset.name, cfg.loss.name) == (
        "monai/dynunet", "monai/dyn-unet", "monai/monai-dataset", "monai/dice-ce-loss")
    assert [m.name for m in cfg.metrics] == ["monai/dice-metric", "monai/mean-iou"]
    assert cfg.trainer.name == "core/seg-trainer" and cfg.postprocessors[0].name == "core/discretize"
    # models without io: the paper's stack lacks its dataset, so it is not the default; monai's is
    models_monai = discover(environ={"BIOM3D_PLUGINS": "models,monai"})
    assert choose_stack(models_monai, None).qid == "monai/dynunet"


def test_a_training_set_of_micron_tiffs_and_millimetre_niftis_is_resampled_in_one_unit(dataset, tmp_path):
    """SimpleITK reads NIfTI in mm, tifffile TIFF in µm: the same voxel size must stay the same size."""
    import shutil

    import SimpleITK as sitk
    from typer.testing import CliRunner

    from biom3d.cli.app import app

    images, masks = tmp_path / "images", tmp_path / "masks"
    for folder, source in ((images, dataset / "train" / "images"), (masks, dataset / "train" / "masks")):
        folder.mkdir()
        for name in ("case0", "case1"):
            shutil.copy(source / f"{name}.tif", folder / f"{name}.tif")
        for name in ("case2", "case3"):  # the same voxels as NIfTI, 0.002 x 0.0005 x 0.0005 mm
            nifti = sitk.GetImageFromArray(tifffile.imread(source / f"{name}.tif"))
            nifti.SetSpacing((0.0005, 0.0005, 0.002))
            sitk.WriteImage(nifti, str(folder / f"{name}.nii.gz"))
    out = tmp_path / "prep"
    result = CliRunner().invoke(app, ["preprocess", "-i", str(images), "-m", str(masks), "-k", "1", "-o", str(out),
                                      "--workers", "0"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "median spacing   2 x 0.5 x 0.5 µm" in result.output
    fp = json.loads((out / "fingerprint.json").read_text(encoding="utf-8"))
    assert fp["spacing"] == pytest.approx([2.0, 0.5, 0.5]) and fp["spacing_unit"] == "um"
    for name in ("case0", "case2"):  # neither shrunk to one voxel nor grown 1000-fold
        assert np.load(out / "images" / f"{name}.npy").shape == (1, *SHAPE)


def _nifti(path, array, spacing_xyz=(0.5, 0.5, 2.0), origin_xyz=(1.0, 2.0, 3.0), direction=(1, 0, 0, 0, 1, 0, 0, 0, 1)):
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing_xyz)
    image.SetOrigin(origin_xyz)
    image.SetDirection([float(v) for v in direction])
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))


def _reoriented_dataset(root, rng):
    """NIfTI images, and their masks as a tool that stores x reversed writes them: the array flipped along x, the
    header's x direction negated and its origin moved to the last column, so the labels lie where they did."""
    truths = {}
    for i in range(2):
        mask = blobs(rng)
        _nifti(root / "images" / f"case{i}.nii.gz", (mask * 2.0 + rng.normal(0, 0.6, SHAPE)).astype(np.float32))
        _nifti(root / "masks" / f"case{i}.nii.gz", np.ascontiguousarray(mask[:, :, ::-1]),
               origin_xyz=(1.0 + 0.5 * (SHAPE[2] - 1), 2.0, 3.0), direction=(-1, 0, 0, 0, 1, 0, 0, 0, 1))
        truths[f"case{i}"] = mask
    return truths


def test_a_mask_stored_in_another_orientation_trains_and_scores_on_its_images_voxels(tmp_path):
    from biom3d.core.stages.evaluate import evaluate

    truths = _reoriented_dataset(tmp_path, np.random.default_rng(3))
    result = preprocess_dataset(tmp_path / "images", tmp_path / "masks", tmp_path / "prep", num_classes=1, workers=0,
                                progress=False)
    for key, mask in truths.items():
        np.testing.assert_array_equal(np.load(tmp_path / "prep" / "masks" / f"{key}.npy"), mask)  # not mirrored
    assert any("another orientation" in w and "flipped along x" in w for w in result.warnings)
    assert "another orientation" in (tmp_path / "prep" / "preprocess.log").read_text(encoding="utf-8")
    # a prediction on the image's grid scores 1 against the reoriented truth, not the Dice of a mirror image
    for key, mask in truths.items():
        _nifti(tmp_path / "pred" / f"{key}.nii.gz", mask)
    assert evaluate(tmp_path / "pred", tmp_path / "masks").mean("dice") == pytest.approx(1.0)


def test_a_mask_rotated_against_its_image_is_refused_naming_both(tmp_path):
    rng = np.random.default_rng(4)
    c, s = np.cos(0.4), np.sin(0.4)
    for i in range(2):
        mask = blobs(rng)
        _nifti(tmp_path / "images" / f"case{i}.nii.gz", mask.astype(np.float32))
        _nifti(tmp_path / "masks" / f"case{i}.nii.gz", mask, direction=(c, -s, 0, s, c, 0, 0, 0, 1))
    with pytest.raises(DataError, match=r"mask .*case0.nii.gz: its direction .* rotated against its image's .*"
                                         r"case0.nii.gz.*Resample"):
        preprocess_dataset(tmp_path / "images", tmp_path / "masks", tmp_path / "prep", num_classes=1, workers=0,
                           progress=False)


def test_a_four_d_tiff_without_metadata_finds_its_channels_by_shape(tmp_path):
    rng = np.random.default_rng(5)
    for i in range(2):
        mask = blobs(rng)
        image = np.stack([mask * 2.0 + rng.normal(0, 0.5, SHAPE), rng.normal(0, 1, SHAPE)]).astype(np.float32)
        (tmp_path / "images").mkdir(exist_ok=True)
        tifffile.imwrite(tmp_path / "images" / f"case{i}.tif", image)  # no ImageJ/OME: tifffile reads QQYX
        write_tiff(tmp_path / "masks" / f"case{i}.tif", mask)
    assert tifffile.TiffFile(tmp_path / "images" / "case0.tif").series[0].axes == "QQYX"
    result = preprocess_dataset(tmp_path / "images", tmp_path / "masks", tmp_path / "prep", num_classes=1, workers=0,
                                progress=False)
    assert result.fingerprint["in_channels"] == 2 and result.fingerprint["channel_axis"] == [0]
    assert np.load(tmp_path / "prep" / "images" / "case0.npy").shape == (2, *SHAPE)

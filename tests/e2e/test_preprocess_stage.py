import json

import numpy as np
import pytest
import tifffile
import yaml

from biom3d.core.errors import DataError
from biom3d.core.stages.preprocess import preprocess_dataset
from tests.e2e.conftest import SHAPE, make_dataset, write_tiff


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

"""biom3d-core + biom3d-monai alone (no io, no models): preprocess, train, predict and evaluate NIfTI data."""

import numpy as np
import pytest

from biom3d.core.builder import Builder
from biom3d.core.discovery import discover
from tests.e2e.conftest import SHAPE, TINY, blobs

sitk = pytest.importorskip("SimpleITK")


@pytest.fixture(scope="module")
def monai_only():
    registry = discover(environ={"BIOM3D_PLUGINS": "monai"})
    assert {p.name for p in registry.plugins.values() if p.state == "loaded"} == {"core", "monai"}
    return registry


def _nifti(path, array):
    img = sitk.GetImageFromArray(array)
    img.SetSpacing((0.5, 0.5, 1.5))
    img.SetOrigin((1.0, 2.0, 3.0))
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(path))


def _dataset(root, *, seed: int) -> None:
    """3 training and 1 test NIfTI volumes of blobs on noise: {train,test}/{img,msk}/c<i>.nii.gz."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", 3), ("test", 1)):
        for i in range(n):
            mask = blobs(rng)
            _nifti(root / split / "img" / f"c{i}.nii.gz", (mask * 2 + rng.normal(0, 0.5, SHAPE)).astype(np.float32))
            _nifti(root / split / "msk" / f"c{i}.nii.gz", mask)


def test_core_and_monai_train_predict_and_evaluate(monai_only, tmp_path):
    from biom3d.core.stages.evaluate import evaluate
    from biom3d.core.stages.predict import predict
    from biom3d.core.stages.preprocess import preprocess_dataset

    _dataset(tmp_path, seed=3)
    prep = preprocess_dataset(tmp_path / "train" / "img", tmp_path / "train" / "msk", tmp_path / "prep", num_classes=1,
                              workers=0, progress=False, registry=monai_only)
    overrides = {k: v for k, v in TINY.items() if k.startswith("train.")}
    overrides["model.params.base_features"] = 4
    result = Builder(prep.config_path, registry=monai_only, overrides=overrides).train(runs_dir=tmp_path / "runs")
    cfg = (result.run_dir / "config.yaml").read_text(encoding="utf-8")
    for qid in ("monai/dyn-unet", "monai/dice-ce-loss", "monai/monai-dataset", "monai/dice-metric"):
        assert qid in cfg
    assert len(result.history) == TINY["train.epochs"] and np.isfinite(result.history[-1]["val_loss"])
    written = predict([result.run_dir], tmp_path / "test" / "img", tmp_path / "pred", tta=False, progress=False,
                      registry=monai_only)
    out = sitk.ReadImage(str(written[0]))
    assert out.GetSize() == SHAPE[::-1] and out.GetSpacing() == pytest.approx((0.5, 0.5, 1.5))
    report = evaluate(tmp_path / "pred", tmp_path / "test" / "msk", registry=monai_only)
    assert 0 <= report.mean("dice") <= 1


def test_a_hand_written_minimal_config_runs_with_core_and_monai(monai_only, tmp_path):
    """Only num_classes and data paths: the monai/dynunet stack fills every slot (no io/, models/ id needed)."""
    import json

    from biom3d.core.stages.run import run_pipeline

    _dataset(tmp_path, seed=4)
    raw = {"num_classes": 1, "runs_dir": str(tmp_path / "runs"),
           "data": {"images": str(tmp_path / "train" / "img"), "masks": str(tmp_path / "train" / "msk"),
                    "test_images": str(tmp_path / "test" / "img"), "test_masks": str(tmp_path / "test" / "msk")}}
    tiny = {k: v for k, v in TINY.items() if k.startswith("train.")}
    result = run_pipeline(raw, overrides=tiny, registry=monai_only, progress=False)
    record = json.loads((result.run_dir / "plugins.json").read_text(encoding="utf-8"))
    assert record["stack"] == "monai/dynunet" and set(record["used"]) == {"core", "monai"}
    assert (result.predictions / "c0.nii.gz").is_file() and (result.folder / "eval.csv").is_file()

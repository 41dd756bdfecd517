"""The plugin announces its components cheaply, and every name and alias resolves."""

import subprocess
import sys

import pytest

import biom3d.monai.plugin as plugin

MODELS = {
    "unet": "UNet",
    "basic-unet": "BasicUNet",
    "dyn-unet": "DynUNet",
    "segresnet": "SegResNet",
    "unetr": "UNETR",
    "swin-unetr": "SwinUNETR",
    "attention-unet": "AttentionUnet",
}
LOSSES = {
    "dice-loss": "DiceLoss",
    "dice-ce-loss": "DiceCELoss",
    "dice-focal-loss": "DiceFocalLoss",
    "tversky-loss": "TverskyLoss",
    "generalized-dice-loss": "GeneralizedDiceLoss",
    "focal-loss": "FocalLoss",
}
METRICS = {"dice-metric": "DiceMetric", "mean-iou": "MeanIoU", "hausdorff": "HausdorffDistanceMetric"}
# biom3d-models' short names: ours must never clash with them
MODELS_PLUGIN_NAMES = {
    "unet3d-vgg-deep",
    "vgg3d",
    "effunet3d",
    "dice-ce",
    "dice",
    "iou",
    "ce",
    "bce",
    "dice-bce",
    "mse",
    "deep-supervision",
}


def test_plugin_import_stays_light():
    code = "import biom3d.monai.plugin, sys; assert not {'monai','torch','numpy'} & set(sys.modules), sorted({'monai','torch','numpy'} & set(sys.modules))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=120)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize(
    ("kind", "table"), [("model", MODELS), ("metric", LOSSES), ("metric", METRICS)], ids=["models", "losses", "metrics"]
)
def test_every_name_and_alias_resolves_to_the_monai_component(registry, kind, table):
    for name, alias in table.items():
        assert registry.resolve(kind, name).qid == f"monai/{name}"
        assert registry.resolve(kind, alias).qid == f"monai/{name}"
        assert registry.resolve(kind, f"monai/{alias}").qid == f"monai/{name}"
        assert name not in MODELS_PLUGIN_NAMES


def test_roles_orientation_and_file_components(registry):
    for name in LOSSES:
        spec = registry.resolve("metric", name).spec
        assert spec.roles == {"loss"} and not spec.higher_is_better
    assert registry.resolve("metric", "dice-metric").spec.higher_is_better
    assert not registry.resolve("metric", "hausdorff").spec.higher_is_better
    assert registry.resolve("reader", "LoadImage").qid == "monai/load-image"
    assert registry.resolve("dataset", "monai-dataset").qid == "monai/monai-dataset"
    assert registry.reader_for("scan.nii.gz").qid == "monai/load-image"
    assert registry.writer_for("pred.nii").qid == "monai/save-image"
    assert registry.reader_for("x.nii.gz").spec.priority == -10 == registry.writer_for("x.nii.gz").spec.priority


def test_announced_suffixes_match_the_reader():
    from biom3d.monai.reader import SUFFIXES

    assert set(plugin.READER_SUFFIXES) == set(SUFFIXES)

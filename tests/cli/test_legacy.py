"""Importing run configs written by the original biom3d 0.1.x (``biom3d config import``)."""

from __future__ import annotations

import builtins
import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from biom3d.cli.legacy import import_legacy, read_legacy, read_legacy_python, read_legacy_yaml
from biom3d.core.config import load_config, validate
from biom3d.core.context import RunContext
from biom3d.core.discovery import get_registry
from biom3d.core.registry import ResolutionError
from biom3d.core.upgrades import CURRENT_SCHEMA_VERSION

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "legacy"
ALL = sorted(p.name for p in FIXTURES.glob("*.yaml"))
DEEP = "models/deep-supervision"
NUCLEUS_PY = FIXTURES / "20250612-140112-unet_nucleus.py"  # default_unet.yaml as the Python config it came from
EDITED_PY = FIXTURES / "organoids_edited.py"


def _original(name: str = "default_unet.yaml") -> dict[str, Any]:
    return read_legacy_yaml(FIXTURES / name)


def _valid(raw: dict[str, Any]):
    return validate(raw, registry=get_registry())


def _has(notes: list[str], *parts: str) -> bool:
    return any(all(p in n for p in parts) for n in notes)


# -- every fixture ------------------------------------------------------------------------------------------
def test_fixtures_are_there():
    assert ALL == ["deep_numpy.yaml", "default_unet.yaml", "effunet_multilabel.yaml"]


@pytest.mark.parametrize("name", ALL)
def test_each_original_config_converts_to_one_the_installed_plugins_validate(name, tmp_path):
    original = _original(name)
    before = copy.deepcopy(original)
    raw, notes = import_legacy(original)
    assert original == before  # the input is not modified
    assert raw["schema_version"] == CURRENT_SCHEMA_VERSION
    cfg = _valid(raw)
    assert cfg.model.name == raw["model"]["name"]
    # plain data only: it dumps safely, without anchors, and loads back as a config file
    text = yaml.safe_dump(raw, sort_keys=False)
    assert "&id" not in text and "!!" not in text
    (tmp_path / "config.yaml").write_text(text, encoding="utf-8")
    assert load_config(tmp_path / "config.yaml").model_dump() == cfg.model_dump()
    assert notes and all(isinstance(n, str) and n for n in notes)
    assert notes[0].startswith("modules: ") and "MODEL " in notes[0]


# -- the default auto-configured run ------------------------------------------------------------------------
def test_default_run_values_land_where_ours_reads_them():
    raw, notes = import_legacy(_original())
    assert raw["name"] == "unet_nucleus" and raw["runs_dir"] == "logs/"
    assert (raw["num_classes"], raw["in_channels"], raw["multilabel"]) == (1, 1, False)
    assert raw["patch_size"] == [40, 160, 160] and raw["aug_patch_size"] == [56, 211, 211]
    assert raw["num_pools"] == [3, 5, 5]
    assert raw["spacing"] == [0.2, 0.124, 0.124]  # (x, y, z) -> (D, H, W)
    assert raw["train"] == {
        "epochs": 1000, "batch_size": 6, "lr": 0.01, "optimizer": "sgd", "momentum": 0.99, "nesterov": True,
        "grad_clip": 12.0, "weight_decay": 3e-5, "scheduler": "poly", "fold": 0, "workers": 6, "fp16": True,
        "val_every": 1, "iters_per_epoch": 250, "val_iters": 50,
    }
    assert raw["data"] == {"images": "data/nucleus/official/train/img", "masks": "data/nucleus/official/train/msk"}
    assert raw["preprocessor"] == {"name": "core/seg-preprocess", "params": {"norm": "zscore"}}
    assert raw["model"] == {"name": "models/unet3d-vgg-deep",
                            "params": {"base_features": 32, "max_features": 320, "deep_supervision": False}}
    assert raw["loss"] == {"name": "models/dice-ce",
                           "params": {"batch_dice": True, "smooth": 1e-5, "include_background": False}}
    assert [m["name"] for m in raw["metrics"]] == ["models/iou", "models/dice"]
    assert raw["predictor"] == {"name": "core/sliding-window", "params": {"tta": True}}
    assert raw["postprocessors"] == [{"name": "core/argmax", "params": {}}]
    callbacks = {c["name"]: c["params"] for c in raw["callbacks"]}
    assert callbacks["core/checkpoint"] == {"every": 1, "save_best": True}
    assert callbacks["core/snapshots"] == {"every": 1}

    cfg = _valid(raw)
    assert RunContext.from_config(cfg).out_channels == 2  # MODEL.kwargs.num_classes: 2 (background + 1)
    assert _has(notes, "MODEL UNet3DVGGDeep -> models/unet3d-vgg-deep", "TRAIN_LOSS DiceCEnnUNet -> models/dice-ce")
    assert not _has(notes, "MODEL.kwargs.num_classes")  # consistent with NUM_CLASSES, so nothing to say


def test_preprocessed_folders_are_not_taken_for_ours_and_the_notes_say_how_to_rerun_preprocess():
    raw, notes = import_legacy(_original())
    assert "preprocessed" not in raw["data"]
    assert _has(notes, "IMG_PATH='data/nucleus/official/train/img_out'", "preprocessed folders",
                "biom3d preprocess --images data/nucleus/official/train/img --masks data/nucleus/official/train/msk "
                "--num-classes 1 --out PREPROCESSED", "data.preprocessed")
    assert _has(notes, "FG_PATH=", "not used")
    assert _has(notes, "CSV_DIR=", "hold_out=1")
    assert _has(notes, "model/<DESC>.pth", "not converted")


def test_preprocessed_folders_without_the_out_naming_leave_the_raw_folders_to_the_user():
    original = _original()
    original["IMG_PATH"], original["MSK_PATH"] = "/data/prep/images", "/data/prep/labels"
    raw, notes = import_legacy(original)
    assert "data" not in raw
    assert _has(notes, "IMG_PATH='/data/prep/images'", "set data.images/data.masks to the raw folders",
                "--images RAW_IMAGES --masks RAW_MASKS")
    _valid(raw)


def test_keys_of_older_configs_are_renamed_as_the_original_did():
    original = _original()
    original["IMG_DIR"], original["MSK_DIR"] = original.pop("IMG_PATH"), original.pop("MSK_PATH")
    raw, _ = import_legacy(original)
    assert raw["data"]["images"] == "data/nucleus/official/train/img"


# -- NUM_CLASSES / USE_SOFTMAX ------------------------------------------------------------------------------
@pytest.mark.parametrize(("softmax", "model_outputs"), [(True, 4), (False, 3)])
def test_num_classes_counts_foreground_only_and_the_model_kwarg_is_derived_again(softmax, model_outputs):
    original = _original()
    # as config_default.py writes it: num_classes=NUM_CLASSES if not USE_SOFTMAX else NUM_CLASSES+1
    original["NUM_CLASSES"], original["USE_SOFTMAX"] = 3, softmax
    original["MODEL"]["kwargs"]["num_classes"] = model_outputs
    raw, notes = import_legacy(original)
    assert raw["num_classes"] == 3 and raw["multilabel"] is (not softmax)
    assert "out_channels" not in raw["model"]["params"]
    assert RunContext.from_config(_valid(raw)).out_channels == model_outputs
    assert raw["postprocessors"][0]["name"] == ("core/argmax" if softmax else "core/threshold")
    assert not _has(notes, "MODEL.kwargs.num_classes")


def test_a_model_num_classes_off_the_convention_is_reported_not_copied():
    original = _original()
    original["NUM_CLASSES"] = 2
    original["MODEL"]["kwargs"]["num_classes"] = 2  # forgot the background under softmax
    raw, notes = import_legacy(original)
    assert raw["num_classes"] == 2 and "out_channels" not in raw["model"]["params"]
    assert _has(notes, "MODEL.kwargs.num_classes=2", "3 outputs")
    assert RunContext.from_config(_valid(raw)).out_channels == 3


# -- the hand-edited EffUNet multi-label run ----------------------------------------------------------------
def test_effunet_multilabel_run():
    raw, notes = import_legacy(_original("effunet_multilabel.yaml"))
    assert raw["name"] == "effunet-organoids-2ch"
    assert (raw["num_classes"], raw["in_channels"], raw["multilabel"]) == (3, 2, True)
    assert raw["patch_size"] == [32, 128, 128] and raw["aug_patch_size"] == [45, 181, 181]  # !!python/tuple
    assert raw["spacing"] == [1.0, 0.3225, 0.3225]
    assert raw["preprocessor"]["params"] == {"norm": "ct", "channel_axis": 1}
    assert raw["model"] == {"name": "models/effunet3d",
                            "params": {"encoder": "efficientnet-b4", "deep_supervision": False}}
    assert raw["loss"] == {"name": "models/dice-bce", "params": {"smooth": 1.0}}
    assert [m["name"] for m in raw["metrics"]] == ["models/dice", "models/iou"]  # train and val Dice merged
    assert raw["postprocessors"] == [{"name": "core/threshold", "params": {}}, {"name": "core/remove-small", "params": {}}]
    assert raw["predictor"]["params"] == {"tta": False}
    assert raw["dataset"]["params"] == {"augment": True, "fg_rate": 0.5, "preload": False}
    train = raw["train"]
    assert (train["epochs"], train["lr"], train["fold"], train["workers"]) == (400, 0.005, 2, 4)
    assert (train["iters_per_epoch"], train["val_iters"], train["val_every"]) == (100, 20, 5)
    assert train["weight_decay"] == 3e-5  # what the original used, not the 1e-4 it was given
    assert {c["name"]: c["params"] for c in raw["callbacks"]}["core/checkpoint"]["every"] == 5
    assert raw["data"] == {"images": "D:\\biom3d\\organoids\\img", "masks": "D:\\biom3d\\organoids\\msk"}
    assert "runs_dir" not in raw  # D:\biom3d\logs belongs to the machine that trained
    for expected in [("TRAIN_DATASET.kwargs: crop_scale=1.2", "dropped"), ("WEIGHT_DECAY=0.0001", "3e-5"),
                     ("USE_FG_CLBK", "dropped"), ("LOG_DIR=",), ("DESC='effunet organoids (2ch)'",),
                     ("--multilabel --norm ct --channel-axis 1",), ("efficientnet-b4",), ("FOLD=2", "train.fold")]:
        assert _has(notes, *expected), expected
    cfg = _valid(raw)
    assert RunContext.from_config(cfg).out_channels == 3


# -- deep supervision ---------------------------------------------------------------------------------------
def test_deep_supervision_run_built_in_a_notebook_with_numpy_values():
    original = _original("deep_numpy.yaml")
    assert original["BATCH_SIZE"] == 4 and original["PATCH_SIZE"] == [48, 128, 128]
    assert original["MEDIAN_SPACING"] == [0.5, 0.5, 1.9999999]
    assert type(original["TRAIN_LOSS"]["kwargs"]) is dict  # was an AttrDict
    raw, notes = import_legacy(original)
    assert raw["train"]["batch_size"] == 4 and raw["train"]["epochs"] == 250
    assert raw["spacing"] == [1.9999999, 0.5, 0.5]
    assert raw["model"]["params"]["deep_supervision"] is True
    assert raw["loss"] == {"name": DEEP, "params": {"loss": {"name": "models/dice-ce", "params": {"smooth": 1.0}},
                                                    "skip_lowest": 1, "weight_factor": 0.5}}
    assert raw["postprocessors"] == [{"name": "core/argmax", "params": {}}, {"name": "core/keep-largest", "params": {}}]
    assert _has(notes, "alphas=[0.0, 0.0625, 0.125, 0.25, 0.5, 1.0]", "weight_factor 0.5", "skip_lowest 1")
    assert not _has(notes, "VAL_LOSS")  # same as the training loss
    cfg = _valid(raw)
    assert cfg.loss.params["loss"]["name"] == "models/dice-ce"


def test_a_plain_loss_under_deep_supervision_is_wrapped():
    original = _original()
    original["USE_DEEP_SUPERVISION"] = True
    original["MODEL"]["kwargs"]["use_deep"] = True
    raw, notes = import_legacy(original)
    assert raw["loss"]["name"] == DEEP and raw["loss"]["params"]["loss"]["name"] == "models/dice-ce"
    assert _has(notes, "wrapped in models/deep-supervision")
    _valid(raw)


def test_a_missing_use_deep_means_deep_supervision_as_in_the_original():
    original = _original()
    del original["MODEL"]["kwargs"]["use_deep"]
    raw, notes = import_legacy(original)
    assert raw["model"]["params"]["deep_supervision"] is True and raw["loss"]["name"] == DEEP
    assert _has(notes, "USE_DEEP_SUPERVISION=False disagrees")
    _valid(raw)


def test_a_deep_loss_without_deep_outputs_keeps_its_inner_loss():
    original = _original("deep_numpy.yaml")
    original["MODEL"]["kwargs"]["use_deep"] = False
    raw, notes = import_legacy(original)
    assert raw["loss"] == {"name": "models/dice-ce", "params": {"smooth": 1.0}}
    assert _has(notes, "expects deep-supervision outputs")
    _valid(raw)


# -- what has no equivalent ---------------------------------------------------------------------------------
def test_unknown_kwargs_and_keys_are_dropped_with_a_note_never_passed_on():
    original = _original()
    original["MODEL"]["kwargs"].update(dropout=0.1, roll_strides=False)
    original["TRAIN_LOSS"]["kwargs"]["gamma"] = 2
    original["PREDICTOR"]["kwargs"]["overlap_mode"] = "hann"
    original["PREPROCESSOR"]["kwargs"]["use_one_hot"] = True
    original["USE_WD_CLBK"] = True
    original["MY_SETTING"] = 1
    raw, notes = import_legacy(original)
    _valid(raw)
    assert "dropout" not in raw["model"]["params"] and "gamma" not in raw["loss"]["params"]
    assert _has(notes, "MODEL.kwargs: dropout=0.1, roll_strides=False: no equivalent in models/unet3d-vgg-deep")
    assert _has(notes, "TRAIN_LOSS.kwargs: gamma=2: no equivalent in models/dice-ce")
    assert _has(notes, "PREDICTOR.kwargs: overlap_mode='hann'")
    assert _has(notes, "PREPROCESSOR.kwargs: use_one_hot=True")
    assert _has(notes, "USE_WD_CLBK", "no equivalent")
    assert _has(notes, "no equivalent, dropped: MY_SETTING")


def test_a_different_validation_loss_is_reported():
    original = _original()
    original["VAL_LOSS"] = {"fct": "Dice", "kwargs": {"name": "val_loss", "use_softmax": True}}
    _, notes = import_legacy(original)
    assert _has(notes, "VAL_LOSS Dice", "validates with the training loss")


@pytest.mark.parametrize(("change", "scheduler"), [
    ({}, "poly"), ({"LR_T_MAX": 1000}, "cosine"), ({"LR_MILESTONES": [500, 800]}, "poly"), ({"LR_START": None}, "constant"),
])
def test_the_learning_rate_schedule_is_the_one_the_original_ran(change, scheduler):
    original = _original()
    for key, value in change.items():
        if value is None:
            del original[key]
        else:
            original[key] = value
    raw, _ = import_legacy(original)
    assert raw["train"]["scheduler"] == scheduler
    _valid(raw)


# -- errors -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("key", "known"), [
    ("MODEL", "UNet3DVGGDeep"), ("TRAIN_LOSS", "DiceCEnnUNet"), ("TRAIN_DATASET", "SegPatchFast"),
    ("PREDICTOR", "SegPatch"), ("POSTPROCESSOR", "Seg"), ("VALIDATER", "SegVal"),
])
def test_an_unknown_module_name_raises_naming_the_key_and_the_known_names(key, known):
    original = _original()
    original[key]["fct"] = "MyThing"
    with pytest.raises(ValueError, match=rf"^{key}: unknown original module 'MyThing'.*{known}"):
        import_legacy(original)


def test_an_unknown_metric_names_its_label():
    original = _original()
    original["VAL_METRICS"]["val_dice"]["fct"] = "HD95"
    with pytest.raises(ValueError, match=r"^VAL_METRICS\.val_dice: unknown original module 'HD95'.*IoU"):
        import_legacy(original)


def test_a_module_without_fct_raises_naming_the_key():
    original = _original()
    original["MODEL"] = "UNet3DVGGDeep"
    with pytest.raises(ValueError, match=r"^MODEL: expected a module written \{fct: Name"):
        import_legacy(original)


def test_a_config_of_ours_is_not_taken_for_an_original_one():
    with pytest.raises(ValueError, match="not an original biom3d config"):
        import_legacy({"schema_version": 2, "num_classes": 1, "model": "unet3d-vgg-deep"})


def test_swin_unetr_maps_to_the_monai_plugin():
    try:
        get_registry().resolve("model", "monai/swin-unetr")
    except ResolutionError:
        pytest.skip("biom3d-monai is not installed")
    original = _original()
    original["PATCH_SIZE"] = [64, 160, 160]
    original["MODEL"] = {"fct": "SwinUNETR", "kwargs": {"img_size": [64, 160, 160], "in_channels": 1, "out_channels": 2,
                                                        "feature_size": 48, "use_checkpoint": True}}
    raw, notes = import_legacy(original)
    assert raw["model"] == {"name": "monai/swin-unetr", "params": {"feature_size": 48, "use_checkpoint": True}}
    assert not _has(notes, "MODEL.kwargs")
    _valid(raw)


# -- reading the file ---------------------------------------------------------------------------------------
def test_python_tags_are_read_as_plain_data_and_nothing_is_executed(tmp_path):
    marker = tmp_path / "executed"
    path = tmp_path / "config.yaml"
    path.write_text(
        "NUM_CLASSES: 1\n"
        "PATCH_SIZE: !!python/tuple [40, 160, 160]\n"
        f"SHELL: !!python/object/apply:os.system ['touch {marker}']\n"
        f"EXEC: !!python/object/apply:builtins.exec [\"open('{marker}', 'w').close()\"]\n"
        f"NEW: !!python/object/new:subprocess.Popen {{args: [['touch', '{marker}']]}}\n"
        "NAME: !!python/name:os.system ''\n"
        "MODULE: !!python/module:subprocess ''\n"
        "OBJECT: !!python/object:argparse.Namespace {a: 1}\n"
        "KWARGS: !!python/object/new:biom3d.utils.config.AttrDict\n"
        "  dictitems: {name: val_dice, use_softmax: true}\n",
        encoding="utf-8",
    )
    with pytest.raises(yaml.constructor.ConstructorError):
        yaml.safe_load(path.read_text(encoding="utf-8"))  # why a dedicated reader is needed
    data = read_legacy_yaml(path)
    assert not marker.exists()
    assert data["PATCH_SIZE"] == [40, 160, 160]
    assert data["SHELL"] == [f"touch {marker}"] and data["NEW"] == {"args": [["touch", str(marker)]]}
    assert (data["NAME"], data["MODULE"], data["OBJECT"]) == ("os.system", "subprocess", {"a": 1})
    assert data["KWARGS"] == {"name": "val_dice", "use_softmax": True}
    assert yaml.safe_load(yaml.safe_dump(data)) == data  # plain data only


def test_numpy_values_of_numpy_1_tags_are_decoded_too(tmp_path):
    text = (FIXTURES / "deep_numpy.yaml").read_text(encoding="utf-8").replace("numpy._core.", "numpy.core.")
    path = tmp_path / "config.yaml"
    path.write_text(text, encoding="utf-8")
    data = read_legacy_yaml(path)
    assert data["BATCH_SIZE"] == 4 and isinstance(data["BATCH_SIZE"], int)
    assert data["NUM_POOLS"] == [3, 5, 5] and data["PREPROCESSOR"]["kwargs"]["median_spacing"] == [0.5, 0.5, 1.9999999]


def test_a_file_that_is_not_a_mapping_is_refused(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("- 1\n- 2\n", encoding="utf-8")
    with pytest.raises(ValueError, match="top level must be a mapping"):
        read_legacy_yaml(path)


# -- Python configs -----------------------------------------------------------------------------------------
def _line(path: Path, start: str) -> int:
    """The line of ``path`` that starts (after indentation) with ``start``: notes must name it."""
    lines = path.read_text(encoding="utf-8").splitlines()
    return next(i for i, line in enumerate(lines, 1) if line.strip().startswith(start))


@pytest.fixture
def nothing_runs(monkeypatch):
    """exec and eval fail the test if anything calls them while a Python config is read."""
    def refuse(*args, **kwargs):
        raise AssertionError("a config file was executed")

    monkeypatch.setattr(builtins, "exec", refuse)
    monkeypatch.setattr(builtins, "eval", refuse)


def test_a_python_config_maps_as_the_yaml_saved_from_it(nothing_runs):
    data, read_notes = read_legacy(NUCLEUS_PY)
    from_python, _ = import_legacy(data)
    from_yaml, _ = import_legacy(_original())
    assert from_python == from_yaml
    assert data["TRAIN_DATASET"]["kwargs"]["patch_size"] == [40, 160, 160]  # names of earlier assignments
    assert data["VAL_EVERY_EPOCH"] == 1 and "Dict" not in data and "k" not in data and "not_settings" not in data
    # what only running the file would give: named with its line, left out
    assert read_notes == [
        f"VAL_DATALOADER_KWARGS.num_workers (line {_line(NUCLEUS_PY, 'num_workers = max(')}): "
        "`max(NUM_WORKERS // 2, 0)` is computed, not evaluated; left out",
        f"MODEL.kwargs.num_classes (line {_line(NUCLEUS_PY, 'num_classes=NUM_CLASSES if')}): "
        "`NUM_CLASSES if not USE_SOFTMAX else NUM_CLASSES + 1` is computed, not evaluated; left out",
    ]
    assert "num_classes" not in data["MODEL"]["kwargs"]


def test_a_hand_edited_python_config_is_read_as_data_and_its_computed_values_are_reported(nothing_runs):
    data, notes = read_legacy_python(EDITED_PY)
    assert data["PATCH_SIZE"] == [32, 128, 128] and all(type(v) is int for v in data["PATCH_SIZE"])  # np.int64(32)
    assert data["BATCH_SIZE"] == 2 and type(data["BATCH_SIZE"]) is int
    assert data["NUM_POOLS"] == [3, 5, 5]  # a tuple
    assert type(data["TRAIN_LOSS"]["kwargs"]) is dict and data["TRAIN_LOSS"]["fct"] == "DiceCEnnUNet"  # AttrDict
    assert data["VAL_METRICS"] == {"val_dice": {"fct": "Dice", "kwargs": {"name": "val_dice", "use_softmax": True}}}
    for computed in ("IMG_PATH", "MSK_PATH", "DESC", "AUG_PATCH_SIZE", "NUM_WORKERS"):
        assert computed not in data
    assert yaml.safe_load(yaml.safe_dump(data)) == data  # plain data only
    for where, start, text in [
        ("IMG_PATH", "IMG_PATH =", "`os.path.join(DATA_ROOT, 'img_out')` is computed"),
        ("MSK_PATH", "MSK_PATH =", "`DATA_ROOT + '/msk_out'` is computed"),
        ("DESC", "DESC =", "`f'unet_organoids_{NUM_CLASSES}c'` is computed"),
        ("AUG_PATCH_SIZE", "AUG_PATCH_SIZE =", "`[int(x * 1.2) for x in PATCH_SIZE]` is computed"),
        ("NUM_WORKERS", "NUM_WORKERS =", "`6 if os.name != 'nt' else 0` is computed"),
        ("TRAIN_DATASET.kwargs.nbof_steps", "nbof_steps=", "`-(-1000 // BATCH_SIZE)` is computed"),
        ("TRAIN_DATASET.kwargs.aug_patch_size", "aug_patch_size=AUG",
         f"refers to AUG_PATCH_SIZE (line {_line(EDITED_PY, 'AUG_PATCH_SIZE =')}), which is not known"),
        ("MODEL.kwargs.num_classes", "num_classes=NUM_CLASSES+1", "`NUM_CLASSES + 1` is computed"),
    ]:
        assert f"{where} (line {_line(EDITED_PY, start)}): {text}" in " | ".join(notes), where
    assert len(notes) == 10 and all(n.endswith("left out") for n in notes)  # and the __main__ block says nothing

    raw, mapped_notes = import_legacy(data)
    cfg = _valid(raw)
    assert cfg.model.name == "models/unet3d-vgg-deep" and raw["model"]["params"]["base_features"] == 16
    assert raw["patch_size"] == [32, 128, 128] and "aug_patch_size" not in raw
    assert raw["train"]["batch_size"] == 2 and "workers" not in raw["train"] and "iters_per_epoch" not in raw["train"]
    assert _has(mapped_notes, "IMG_PATH/MSK_PATH are not set")
    assert _has(mapped_notes, "no equivalent, dropped: DATA_ROOT")


def test_python_statements_bind_as_the_original_loader_saw_them(tmp_path, nothing_runs):
    path = tmp_path / "config.py"
    path.write_text(
        '"""A config."""\n'                                          # 1
        "import numpy as np\n"                                       # 2
        "NUM_CLASSES = 1\n"                                          # 3
        "PATCH_SIZE = (np.int64(40), np.float64(160.0), -1)\n"       # 4
        "NB_EPOCHS = 10\n"                                           # 5
        "NB_EPOCHS = 20\n"                                           # 6
        "LR_START, WEIGHT_DECAY = 1e-3, 3e-5\n"                      # 7
        "if NUM_CLASSES > 1:\n"                                      # 8
        "    USE_SOFTMAX = False\n"                                  # 9
        "MODEL = dict(fct='UNet3DVGGDeep', kwargs={'factor': 8})\n"  # 10
        "MODEL['kwargs']['factor'] = 16\n"                           # 11
        "FOLD = 1\n"                                                 # 12
        "FOLD += 1\n"                                                # 13
        "TMP = 3\n"                                                  # 14
        "del TMP\n"                                                  # 15
        "SEEN = {1, 1, 2}\n"                                         # 16
        "CONFIG = Dict(**globals().copy())\n"                        # 17
        "DESC = 'too late'\n",                                       # 18
        encoding="utf-8",
    )
    data, notes = read_legacy_python(path)
    assert data == {"NUM_CLASSES": 1, "PATCH_SIZE": [40, 160.0, -1], "NB_EPOCHS": 20, "LR_START": 1e-3,
                    "WEIGHT_DECAY": 3e-5, "SEEN": [1, 2]}
    assert notes == [
        "USE_SOFTMAX (line 8): assigned inside `if`, not evaluated; left out",
        "MODEL (line 11): `MODEL['kwargs']['factor'] = ...` changes it in place, not evaluated; left out",
        "FOLD (line 13): `FOLD += 1` is computed, not evaluated; left out",
        "DESC (line 18): assigned after CONFIG, which the original did not read; ignored",
    ]


def test_a_config_dict_assigned_to_CONFIG_is_what_is_read(tmp_path):
    path = tmp_path / "config.py"
    path.write_text("NB_EPOCHS = 5\nCONFIG = {'NUM_CLASSES': 2, 'NB_EPOCHS': NB_EPOCHS}\n", encoding="utf-8")
    assert read_legacy_python(path) == ({"NUM_CLASSES": 2, "NB_EPOCHS": 5}, [])
    path.write_text("NUM_CLASSES = 2\n", encoding="utf-8")
    data, notes = read_legacy_python(path)
    assert data == {"NUM_CLASSES": 2} and _has(notes, "no `CONFIG = Dict(**globals().copy())` line")
    path.write_text("from biom3d.config_default import *\nNUM_CLASSES = 2\nPATCH_SIZE = PATCH\n", encoding="utf-8")
    data, notes = read_legacy_python(path)
    assert data == {"NUM_CLASSES": 2}
    assert _has(notes, "from biom3d.config_default import * (line 1): the names it brings are not read")
    assert _has(notes, "PATCH_SIZE (line 3): `PATCH` is not assigned earlier in the file; left out")


RUNS_CODE = [
    ("__import__('os').system('touch {marker}')", "it calls __import__('os').system"),
    ("NUM_WORKERS = __import__('os').system('touch {marker}')", "it calls __import__('os').system"),
    ("OS = __import__('os')", "it uses __import__"),
    ("LOG_DIR = open('{marker}', 'w')", "it uses open"),
    ("exec(\"open('{marker}', 'w')\")", "it uses exec"),
    ("import subprocess", "it imports subprocess"),
    ("from os import system", "it imports os.system"),
    ("import os\nLOG_DIR = os.system('touch {marker}')", "it calls os.system"),
    ("MODEL = Dict(fct=().__class__.__base__.__subclasses__(), kwargs=Dict())", "it uses .__subclasses__"),
    ("if NUM_CLASSES:\n    print('{marker}')", "`print('"),
]


@pytest.mark.parametrize(("code", "reason"), RUNS_CODE)
def test_a_python_config_that_runs_code_is_refused_naming_the_file_and_line(code, reason, tmp_path, nothing_runs):
    marker = tmp_path / "executed"
    path = tmp_path / "config.py"
    path.write_text("NUM_CLASSES = 1\nPATCH_SIZE = [40, 160, 160]\n" + code.format(marker=marker) + "\n",
                    encoding="utf-8")
    line = 3 + code.count("\n") if "import os\n" in code or "if NUM" in code else 3
    with pytest.raises(ValueError, match=rf"^{path}, line {line}: .*nothing in it was run") as raised:
        read_legacy(path)
    assert reason in str(raised.value)
    assert not marker.exists()


def test_a_python_config_with_a_syntax_error_is_refused_naming_the_line(tmp_path, nothing_runs):
    marker = tmp_path / "executed"
    path = tmp_path / "config.py"
    path.write_text(f"__import__('os').system('touch {marker}')\nNUM_CLASSES = 1\nPATCH_SIZE = [40, 160 160]\n",
                    encoding="utf-8")
    with pytest.raises(ValueError, match=rf"^{path}, line 3: not valid Python: .*nothing in it was run"):
        read_legacy(path)
    assert not marker.exists()

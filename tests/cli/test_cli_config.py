import json

import yaml

from tests.cli.helpers import run_cli
from tests.cli.test_cli_plugins import _heavy
from tests.conftest import FIXTURES

GOOD = "num_classes: 2\npatch_size: [32, 64, 64]\nnum_pools: [3, 4, 4]\nmodel: {name: UNet3DVGGDeep, params: {base_features: 16}}\n"
BAD = """num_classes: 0
train: {epochs: 0, lrr: 0.1}
model: {name: unet3d-vgg-dep, params: {}}
loss: {name: dice-ce, params: {smooth: -1}}
metrics: [dice, {name: iou, params: {bogus: 1}}]
"""


def test_validate_reports_every_problem_without_torch(tmp_path):
    (tmp_path / "good.yaml").write_text(GOOD, encoding="utf-8")
    (tmp_path / "bad.yaml").write_text(BAD, encoding="utf-8")
    rc, out, err, modules = run_cli(["config", "validate", str(tmp_path / "good.yaml")], tmp_path)
    assert rc == 0, err
    assert "valid (stack models/paper: model models/unet3d-vgg-deep" in out
    assert not _heavy(modules)
    rc, out, err, modules = run_cli(["config", "validate", str(tmp_path / "bad.yaml")], tmp_path)
    assert rc == 2 and "Traceback" not in err
    for path in ("num_classes:", "train.epochs:", "train.lrr: unknown key; did you mean 'lr'?", "model.name:",
                 "loss.params.smooth:", "metrics[1].params.bogus:"):
        assert path in err, path
    assert "Did you mean: 'unet3d-vgg-deep'" in err
    assert not _heavy(modules)


def test_show_resolves_ids_and_defaults(tmp_path):
    (tmp_path / "good.yaml").write_text(GOOD, encoding="utf-8")
    rc, out, err, modules = run_cli(["config", "show", str(tmp_path / "good.yaml")], tmp_path)
    assert rc == 0, err
    shown = yaml.safe_load(out)
    assert shown["model"]["name"] == "models/unet3d-vgg-deep" and shown["model"]["params"]["base_features"] == 16
    assert shown["model"]["params"]["max_features"] == 320 and shown["train"]["momentum"] == 0.99
    assert not _heavy(modules)


def test_schema_is_valid_json_schema_for_installed_plugins(tmp_path):
    import jsonschema

    rc, out, err, modules = run_cli(["config", "schema", "-o", str(tmp_path / "s.json")], tmp_path)
    assert rc == 0, err
    schema = json.loads((tmp_path / "s.json").read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.validate(yaml.safe_load(GOOD), schema)
    model_names = {n for d in schema["$defs"].values() if "name" in d.get("properties", {})
                   for n in d["properties"]["name"].get("enum", [])}
    assert {"models/unet3d-vgg-deep", "UNet3DVGGDeep", "monai/swin-unetr", "SwinUNETR"} <= model_names
    assert not _heavy(modules)


def test_import_original_config(tmp_path):
    rc, out, err, _ = run_cli(["config", "import", str(FIXTURES / "legacy" / "default_unet.yaml")], tmp_path)
    assert rc == 0, err
    imported = yaml.safe_load(out)
    assert imported["model"]["name"] == "models/unet3d-vgg-deep" and "note:" in err
    (tmp_path / "ours.yaml").write_text(GOOD, encoding="utf-8")
    rc, out, err, _ = run_cli(["config", "import", str(tmp_path / "ours.yaml")], tmp_path)
    assert rc == 2 and "not an original biom3d config" in err and "Traceback" not in err


def test_import_original_python_config(tmp_path):
    legacy = FIXTURES / "legacy"
    imported = tmp_path / "imported.yaml"
    rc, out, err, modules = run_cli(["config", "import", str(legacy / "20250612-140112-unet_nucleus.py"),
                                     "-o", str(imported)], tmp_path)
    assert rc == 0, err
    assert "note: MODEL.kwargs.num_classes (line " in err and "is computed, not evaluated" in err
    assert not _heavy(modules)  # parsed, never imported: nothing it names is loaded
    rc, out, err, _ = run_cli(["config", "import", str(legacy / "default_unet.yaml")], tmp_path)
    assert rc == 0, err
    assert yaml.safe_load(imported.read_text(encoding="utf-8")) == yaml.safe_load(out)  # the YAML the original saved from it
    rc, out, err, _ = run_cli(["config", "validate", str(imported)], tmp_path)
    assert rc == 0, err


def test_import_refuses_a_python_config_that_runs_code(tmp_path):
    marker = tmp_path / "executed"
    (tmp_path / "evil.py").write_text(f"NUM_CLASSES = 1\n__import__('os').system('touch {marker}')\n", encoding="utf-8")
    rc, out, err, _ = run_cli(["config", "import", str(tmp_path / "evil.py")], tmp_path)
    assert rc == 2 and "Traceback" not in err
    assert f"{tmp_path / 'evil.py'}, line 2: it calls __import__('os').system" in err
    assert not marker.exists()
    (tmp_path / "broken.py").write_text("NUM_CLASSES = 1\nPATCH_SIZE = [40, 160\n", encoding="utf-8")
    rc, out, err, _ = run_cli(["config", "import", str(tmp_path / "broken.py")], tmp_path)
    assert rc == 2 and "Traceback" not in err and "broken.py, line 2: not valid Python" in err

def test_newer_schema_version_is_refused(tmp_path):
    (tmp_path / "new.yaml").write_text("schema_version: 99\n", encoding="utf-8")
    rc, out, err, _ = run_cli(["config", "validate", str(tmp_path / "new.yaml")], tmp_path)
    assert rc == 2 and "newer than" in err and "pip install -U biom3d-core" in err

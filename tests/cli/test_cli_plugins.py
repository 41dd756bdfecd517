import json

from tests.cli.helpers import run_cli
from tests.conftest import DISTS

HEAVY = {"torch", "numpy", "monai", "SimpleITK", "tifffile", "torchio", "scipy", "matplotlib", "skimage"}
FAKE = [str(DISTS / "main"), str(DISTS / "later")]


def _heavy(modules):
    return {m for m in modules if m.split(".")[0] in HEAVY}


def test_help_and_version_import_nothing_heavy(tmp_path):
    for args in (["--help"], ["--version"], ["config", "--help"]):
        rc, out, err, modules = run_cli(args, tmp_path, pythonpath=FAKE)
        assert rc == 0, err
        assert not _heavy(modules), args
        plugin_modules = {m for m in modules if m.startswith(("fx_", "biom3d.core", "biom3d.io", "biom3d.models", "biom3d.monai", "biom3d.cli.plugin"))}
        assert not plugin_modules, args
    rc, out, _, _ = run_cli(["--version"], tmp_path)
    assert out.startswith("biom3d-cli 0.1.0 (biom3d-core 0.1.0")


def test_plugins_lists_states_without_torch(tmp_path):
    rc, out, err, modules = run_cli(["plugins"], tmp_path, pythonpath=FAKE)
    assert rc == 0, err
    assert not _heavy(modules)
    lines = {line.split()[0]: line for line in out.splitlines()[1:] if line.strip()}
    assert "loaded" in lines["core"] and "biom3d-core" in lines["core"]
    assert "failed" in lines["broken"] and "einops_is_not_installed_anywhere" in lines["broken"]
    assert "incompatible" in lines["oldcore"]
    assert "failed" in lines["typo"] and "biom3d_model" in lines["typo"]


def test_plugins_json_and_components(tmp_path):
    rc, out, err, modules = run_cli(["plugins", "--components", "--json"], tmp_path, pythonpath=FAKE)
    assert rc == 0, err
    assert not _heavy(modules)
    data = json.loads(out)
    states = {(p["name"], p["dist"]): p["state"] for p in data["plugins"]}
    assert states[("acme", "biom3d-acme")] == "loaded" and states[("wrongrec", "biom3d-wrongrec")] == "failed"
    assert states[("acme", "biom3d-acme-fork")] == "shadowed"
    tiny = next(c for c in data["components"] if c["id"] == "acme/tiny-net")
    assert tiny["kind"] == "model" and tiny["aliases"] == ["TinyNet"] and tiny["summary"] == "A tiny test net."


def test_plugins_of_one_kind_plural_or_mistyped(tmp_path):
    for asked, kind in (("models", "model"), ("losses", "metric"), ("loss", "metric")):
        rc, out, err, _ = run_cli(["plugins", "--kind", asked], tmp_path, pythonpath=FAKE)
        assert rc == 0, err
        kinds = {line.split()[0] for line in out.splitlines() if line.startswith(("model ", "metric "))}
        assert kinds == {kind}, asked
    rc, out, err, _ = run_cli(["plugins", "--kind", "modle"], tmp_path, pythonpath=FAKE)
    assert rc == 2 and "--kind 'modle'" in err and "did you mean 'model'?" in err and "bug" not in err


def test_plugins_show(tmp_path):
    rc, out, err, _ = run_cli(["plugins", "show", "acme"], tmp_path, pythonpath=FAKE)
    assert rc == 0, err
    assert "acme: loaded" in out and "biom3d-acme 0.2.0" in out and "acme/tiny-net" in out
    rc, out, err, _ = run_cli(["plugins", "show", "nope"], tmp_path, pythonpath=FAKE)
    assert rc == 2 and "no plugin named 'nope'" in err and "Traceback" not in err


def test_strict_mode_fails_loudly_but_help_still_works(tmp_path):
    env = {"BIOM3D_STRICT_PLUGINS": "1"}
    rc, out, err, _ = run_cli(["plugins"], tmp_path, env=env, pythonpath=FAKE)
    assert rc == 3 and "plugin 'broken'" in err
    rc, out, err, _ = run_cli(["--help"], tmp_path, env=env, pythonpath=FAKE)
    assert rc == 0


def test_plugins_reports_formats_several_plugins_claim_and_the_winner(tmp_path):
    import json

    rc, out, err, _ = run_cli(["plugins"], tmp_path)
    assert rc == 0, err
    rows = [line.split() for line in out.splitlines() if line.startswith(("reader ", "writer "))]
    assert ["reader", ".nii.gz", "io/sitk", "(10),", "monai/load-image", "(-10)", "io/sitk"] in rows
    rc, out, err, _ = run_cli(["plugins", "--json"], tmp_path)
    clashes = json.loads(out)["format_clashes"]
    assert {"kind": "writer", "suffix": ".nii", "claimed_by": "io/sitk (10), monai/save-image (-10)",
            "winner": "io/sitk"} in clashes

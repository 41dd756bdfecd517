"""The example third-party package, really pip-installed, is discovered and selectable by config."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cli.helpers import run_cli

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-compile",
         "--target", str(target), str(ROOT / "examples" / "biom3d-example")],
        check=True, capture_output=True, timeout=300,
    )
    return target


def test_installed_example_appears_with_its_components(installed, tmp_path):
    rc, out, err, modules = run_cli(["plugins", "--components", "--json"], tmp_path, pythonpath=[str(installed)])
    assert rc == 0, err
    data = json.loads(out)
    example = next(p for p in data["plugins"] if p["name"] == "example")
    assert example["state"] == "loaded" and example["dist"] == "biom3d-example" and example["components"] == 3
    ids = {c["id"] for c in data["components"]}
    assert {"example/tiny-unet", "example/focal", "example/tiny"} <= ids
    assert "torch" not in modules and "biom3d_example.nets" not in modules


def test_example_components_build_and_run(installed, tmp_path):
    script = """
import torch
from biom3d.core.context import RunContext
from biom3d.core.discovery import get_registry
reg = get_registry()
ctx = RunContext(num_classes=2, in_channels=1)
net = reg.resolve("model", "TinyUNet").build({"features": 4, "levels": 2}, ctx)
x = torch.randn(1, 1, 16, 16, 16)
y = net(x)
loss = reg.resolve("metric", "example/focal").build({"gamma": 2.0}, ctx)
l = loss(y, torch.randint(0, 3, (1, 16, 16, 16)))
l.backward()
print(tuple(y.shape), float(l) > 0)
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=300,
                          env={"PYTHONPATH": str(installed), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "(1, 3, 16, 16, 16) True"


def test_a_third_party_stack_is_listed_and_chosen_by_config(installed, tmp_path):
    rc, out, err, _ = run_cli(["plugins", "--kind", "stack"], tmp_path, pythonpath=[str(installed)])
    assert rc == 0, err
    lines = {line.split()[1]: line for line in out.splitlines() if line.startswith("stack ")}
    assert "priority 100 (default)" in lines["models/paper"] and "priority 10" in lines["example/tiny"]
    script = """
from biom3d.core.config import validate
default = validate({"num_classes": 1})
chosen = validate({"num_classes": 1, "stack": "example/tiny"})
override = validate({"num_classes": 1, "stack": "example/tiny", "loss": "models/dice-ce"})
print(default.stack, default.model.name)
print(chosen.stack, chosen.model.name, chosen.model.params["features"], chosen.loss.name, chosen.trainer.name)
print(override.loss.name, override.model.name)
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, encoding="utf-8",
                          timeout=300, env={"PYTHONPATH": str(installed), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "models/paper models/unet3d-vgg-deep",  # installing the example changed no default
        "example/tiny example/tiny-unet 8 example/focal core/seg-trainer",
        "models/dice-ce example/tiny-unet",  # a slot the config sets overrides the stack's
    ]

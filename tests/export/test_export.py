"""`biom3d export` end to end on a tiny trained run: TorchScript, ONNX and a bioimage.io package (validated
with bioimageio.spec), each predicting like the run folder, also without biom3d-models; exports.json and
--overwrite; a network whose traced graph would be wrong is refused with its name and the reason."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from biom3d.core.errors import InputError, RunError
from biom3d.core.hookspecs import hookimpl

FORMATS = ("torchscript", "onnx", "bioimageio")


@pytest.fixture(scope="module")
def exports(run_dir, tmp_path_factory) -> dict[str, Path]:
    from biom3d.export.exporter import export

    out = tmp_path_factory.mktemp("exports")
    return {w.format: w.path for w in export(run_dir, FORMATS, out)}


@pytest.fixture(scope="module")
def reference(run_dir, data, tmp_path_factory) -> tuple[Path, np.ndarray]:
    """The run folder's prediction of the test image: the mask written, and the probabilities."""
    from biom3d.core.stages.predict import predict

    out = tmp_path_factory.mktemp("ref")
    predict([run_dir], data / "test" / "images", out, progress=False, device="cpu")
    return out / "case0.tif", _probabilities(run_dir, data / "test" / "images" / "case0.tif")


def _probabilities(model_path: Path, image_path: Path) -> np.ndarray:
    from biom3d.core.discovery import get_registry
    from biom3d.core.stages.loading import load_model
    from biom3d.core.stages.predict import predict_image

    reg = get_registry()
    model = load_model(model_path, registry=reg, device="cpu")
    return predict_image([model], reg.reader_for(image_path).build({}, None)(image_path))


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    return 2 * float((a & b).sum()) / max(1, int(a.sum() + b.sum()))


@pytest.mark.parametrize("fmt", FORMATS)
def test_each_export_predicts_like_the_run_folder(fmt, exports, data, reference, tmp_path):
    import tifffile

    from biom3d.core.stages.predict import predict

    predict([exports[fmt]], data / "test" / "images", tmp_path, progress=False, device="cpu")
    ours, ref = tifffile.imread(tmp_path / "case0.tif"), tifffile.imread(reference[0])
    assert ours.shape == ref.shape and ref.any()
    assert _dice(ours, ref) >= 0.999
    diff = float(np.abs(_probabilities(exports[fmt], data / "test" / "images" / "case0.tif") - reference[1]).max())
    print(f"{fmt}: max probability difference to the run folder {diff:.2e}")
    assert diff < 1e-4


def test_a_run_folder_predicts_alike_with_the_onnxruntime_backend(run_dir, data, reference, tmp_path):
    import tifffile

    from biom3d.cli.app import main
    from biom3d.core.discovery import get_registry
    from biom3d.core.stages.loading import load_run
    from biom3d.core.stages.predict import predict_image

    code = main(["predict", str(run_dir), "--input", str(data / "test" / "images"), "--output", str(tmp_path),
                 "--device", "cpu", "--backend", "onnxruntime"])
    assert code in (0, None)
    assert _dice(tifffile.imread(tmp_path / "case0.tif"), tifffile.imread(reference[0])) >= 0.999
    reg, image = get_registry(), data / "test" / "images" / "case0.tif"
    run = load_run(run_dir, registry=reg, device="cpu", backend="onnxruntime")
    probs = predict_image([run], reg.reader_for(image).build({}, None)(image))
    assert float(np.abs(probs - reference[1]).max()) < 1e-4
    with pytest.raises(InputError, match="choose torch or onnxruntime"):
        load_run(run_dir, registry=reg, device="cpu", backend="tensorrt")


def test_sidecars_hold_what_inference_needs(exports, run_dir):
    from biom3d.core.exported import sha256_file, sidecar_path

    config = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
    fingerprint = json.loads((run_dir / "fingerprint.json").read_text(encoding="utf-8"))
    for fmt in ("torchscript", "onnx"):
        side = json.loads(sidecar_path(exports[fmt]).read_text(encoding="utf-8"))
        assert side["export"]["format"] == fmt and side["export"]["sha256"] == sha256_file(exports[fmt])
        assert side["context"]["patch_size"] == config["patch_size"] and side["context"]["num_classes"] == 1
        assert side["context"]["multilabel"] is False and side["context"]["spacing"] == config["spacing"]
        assert side["fingerprint"] == fingerprint  # normalisation statistics and spacing
        assert side["components"]["preprocessor"] == config["preprocessor"]
        assert side["components"]["postprocessors"] == config["postprocessors"]
        assert side["network"]["component"] == "models/unet3d-vgg-deep"
        assert set(side["plugins"]) == {"core"}  # what inference needs: not the network's plugin
        assert side["trained_with"]["models"]["dist"] == "biom3d-models" and side["versions"]["torch"]
    assert json.loads(sidecar_path(exports["torchscript"]).read_text(encoding="utf-8"))["export"]["dynamic_spatial"]
    onnx_side = json.loads(sidecar_path(exports["onnx"]).read_text(encoding="utf-8"))["export"]
    assert onnx_side["opset"] == 17
    import onnxruntime as ort  # what the sidecar says of the graph's axes is what the graph has

    batch, _, *spatial = ort.InferenceSession(str(exports["onnx"])).get_inputs()[0].shape
    assert (batch == 1) == (onnx_side["batch"] == 1)
    assert all(isinstance(s, str) for s in spatial) if onnx_side["dynamic_spatial"] else spatial == config["patch_size"]


def test_the_bioimageio_package_validates_and_its_tensors_come_from_the_model(exports):
    from biom3d.export.bioimageio import validate

    summary = validate(exports["bioimageio"])  # bioimageio.spec, reading every file of the package
    assert summary.status in ("valid-format", "passed")
    assert not [e for d in summary.details for e in d.errors]
    with zipfile.ZipFile(exports["bioimageio"]) as zf:
        rdf = yaml.safe_load(zf.read("rdf.yaml"))
        assert rdf["format_version"].startswith("0.5")
        assert set(rdf["weights"]) == {"pytorch_state_dict", "torchscript", "onnx"}
        assert rdf["weights"]["pytorch_state_dict"]["architecture"]["import_from"] == "biom3d.export.architecture"
        (inp,), (out,) = rdf["inputs"], rdf["outputs"]
        assert [a.get("id", a["type"]) for a in inp["axes"]] == ["batch", "channel", "z", "y", "x"]
        assert [p["id"] for p in inp["preprocessing"]] == ["ensure_dtype", "zero_mean_unit_variance", "ensure_dtype"]
        assert [a.get("halo") for a in out["axes"][2:]] == [4, 6, 6]  # a quarter of the (16, 24, 24) patch
        # the run was trained on TIFFs calibrated in µm: the axes say so (scale alone would read as pixels)
        assert [(a["scale"], a["unit"]) for a in inp["axes"][2:]] == [(2.0, "micrometer"), (0.5, "micrometer"),
                                                                     (0.5, "micrometer")]
        assert [a["unit"] for a in out["axes"][2:]] == ["micrometer"] * 3
        assert any(c.get("doi") == "10.1016/j.media.2026.104184" for c in rdf["cite"])
        assert rdf["covers"] and rdf["documentation"]["source"] == "README.md"
        assert "## Validation" in zf.read("README.md").decode("utf-8")
        assert "resample images to 2 x 0.5 x 0.5 µm (z, y, x)" in zf.read("README.md").decode("utf-8")
        raw = np.load(zf.open(inp["test_tensor"]["source"]))
        expected = np.load(zf.open(out["test_tensor"]["source"]))
        with pytest.warns(DeprecationWarning):  # torch 2.13 deprecates TorchScript; consumers still read it
            network = torch.jit.load(zf.open(rdf["weights"]["torchscript"]["source"]))
    normalised = (raw - raw.mean(axis=(2, 3, 4), keepdims=True)) / (raw.std(axis=(2, 3, 4), keepdims=True) + 1e-6)
    with torch.no_grad():
        again = network(torch.from_numpy(normalised.astype(np.float32))).numpy()
    assert raw.shape == (1, 1, 16, 24, 24) and expected.shape == (1, 2, 16, 24, 24)
    assert np.allclose(again, expected, atol=1e-5) and np.allclose(expected.sum(1), 1, atol=1e-5)


def test_exports_are_recorded_and_never_overwritten_without_overwrite(exports, run_dir):
    from biom3d.core.exported import sha256_file
    from biom3d.export.exporter import export, read_exports

    records = {r["format"]: r for r in read_exports(run_dir)}
    assert set(records) == set(FORMATS)
    for fmt, path in exports.items():
        assert records[fmt]["path"] == str(path.resolve()) and records[fmt]["sha256"] == sha256_file(path)
        assert records[fmt]["checkpoint"] == "best.pt" and records[fmt]["versions"]["biom3d-export"]
    assert records["bioimageio"]["validation"]["status"] == "valid-format"
    before = exports["torchscript"].stat().st_mtime_ns
    with pytest.raises(InputError, match="already exists.*--overwrite"):
        export(run_dir, ["torchscript"], exports["torchscript"])
    assert exports["torchscript"].stat().st_mtime_ns == before
    export(run_dir, ["torchscript"], exports["torchscript"], overwrite=True, checkpoint="last")
    again = read_exports(run_dir)
    assert len(again) == 3 and {r["format"]: r for r in again}["torchscript"]["checkpoint"] == "last.pt"


def test_an_export_must_come_with_its_sidecar_unchanged(exports, tmp_path):
    from biom3d.core.discovery import get_registry
    from biom3d.core.stages.loading import load_model

    reg = get_registry()
    lone = tmp_path / "lone.onnx"
    shutil.copy(exports["onnx"], lone)
    with pytest.raises(InputError, match="no sidecar lone.onnx.json"):
        load_model(lone, registry=reg, device="cpu")
    shutil.copy(exports["onnx"].with_name(exports["onnx"].name + ".json"), tmp_path / "lone.onnx.json")
    lone.write_bytes(lone.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(RunError, match="checksum"):
        load_model(lone, registry=reg, device="cpu")
    with pytest.raises(InputError, match="--checkpoint chooses a run folder"):
        load_model(exports["bioimageio"], registry=reg, device="cpu", checkpoint="best")


class _Branchy(torch.nn.Module):
    """Data-dependent control flow: tracing records one branch and silently drops the other."""

    def __init__(self, out_channels: int):
        super().__init__()
        self.conv = torch.nn.Conv3d(1, out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.mean() > 0:
            return self.conv(x)
        return -self.conv(x)


class _BranchyPlugin:
    """A test plugin offering the model ``fx/branchy``."""

    @hookimpl
    def biom3d_models(self):
        from biom3d.core.specs import ModelSpec

        yield ModelSpec(name="branchy", target=lambda params, ctx: _Branchy(ctx.out_channels))


def test_a_network_whose_trace_would_be_wrong_is_refused_by_name(run_dir, tmp_path):
    from biom3d.core.checkpoints import save_checkpoint
    from biom3d.core.discovery import discover
    from biom3d.export.exporter import export
    from biom3d.export.graph import ExportError

    branchy = tmp_path / "branchy-run"
    shutil.copytree(run_dir, branchy, ignore=shutil.ignore_patterns("checkpoints", "exports.json"))
    config = yaml.safe_load((branchy / "config.yaml").read_text(encoding="utf-8"))
    config["model"] = {"name": "fx/branchy", "params": {}}
    (branchy / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    save_checkpoint(branchy / "checkpoints" / "best.pt", {"model": _Branchy(2).state_dict(), "epoch": 0})
    registry = discover(extra=[("fx", _BranchyPlugin())])
    for fmt, name in (("torchscript", "TorchScript"), ("onnx", "ONNX")):
        with pytest.raises(ExportError, match=rf"network 'fx/branchy' cannot be exported to {name}: .*control flow"):
            export(branchy, [fmt], tmp_path / "out", registry=registry)
    assert not (tmp_path / "out").exists() and not (branchy / "exports.json").exists()


def test_predict_from_a_package_without_the_models_plugin(exports, data, reference, tmp_path):
    import tifffile

    code = ("import sys\nfrom biom3d.cli.app import main\n"
            "code = main(['predict', sys.argv[1], '--input', sys.argv[2], '--output', sys.argv[3], '--device', 'cpu'])\n"
            "print('MODELS_IMPORTED', 'biom3d.models' in sys.modules)\nsys.exit(code)\n")
    env = {**os.environ, "BIOM3D_DISABLE_PLUGINS": "models"}
    env.pop("BIOM3D_PLUGINS", None)
    done = subprocess.run([sys.executable, "-c", code, str(exports["bioimageio"]), str(data / "test" / "images"),
                           str(tmp_path)], env=env, capture_output=True, text=True, encoding="utf-8",
                          errors="replace", timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "MODELS_IMPORTED False" in done.stdout
    assert _dice(tifffile.imread(tmp_path / "case0.tif"), tifffile.imread(reference[0])) >= 0.999


def test_the_command_comes_from_the_entry_point_and_its_module_is_light(run_dir, tmp_path):
    import typer
    from typer.testing import CliRunner

    from biom3d.cli import commands

    light = subprocess.run([sys.executable, "-c", "import sys, biom3d.export.cli; print(sorted(m for m in "
                            "('torch', 'onnx', 'numpy', 'bioimageio') if m in sys.modules))"],
                           capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=60)
    assert light.stdout.strip() == "[]", light.stderr
    app = typer.Typer()

    @app.command()
    def predict() -> None:  # a stand-in built-in, so that `export` is a plugin command among others
        pass

    (report,) = commands.add_plugin_commands(app, ["export"])
    assert (report.name, report.dist, report.state) == ("export", "biom3d-export", "loaded")
    result = CliRunner().invoke(app, ["export", str(run_dir), "--format", "torchscript", "--output",
                                      str(tmp_path / "model.pt"), "--checkpoint", "last"])
    assert result.exit_code == 0, result.output
    assert f"torchscript: {tmp_path / 'model.pt'} (+ model.pt.json)" in result.output
    assert json.loads((tmp_path / "model.pt.json").read_text(encoding="utf-8"))["source"]["checkpoint"] == "last.pt"
    refused = CliRunner().invoke(app, ["export", str(run_dir), "--format", "zip", "--output", str(tmp_path)])
    assert refused.exit_code == 2 and "zip" in refused.output


@pytest.mark.skipif(not os.environ.get("BIOM3D_BIOIMAGEIO_CORE_PYTHON"),
                    reason="bioimageio.core pins an older bioimageio.spec: set BIOM3D_BIOIMAGEIO_CORE_PYTHON to a "
                           "python that has it (see packages/biom3d-export/README.md)")
def test_bioimageio_core_model_test_passes(exports):
    code = ("import sys\nfrom bioimageio.core import test_model\n"
            "for wf in ('torchscript', 'onnx', 'pytorch_state_dict'):\n"
            "    print(wf, test_model(sys.argv[1], weight_format=wf, devices=['cpu']).status)\n")
    done = subprocess.run([os.environ["BIOM3D_BIOIMAGEIO_CORE_PYTHON"], "-c", code, str(exports["bioimageio"])],
                          capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=600)
    assert done.stdout.split() == ["torchscript", "passed", "onnx", "passed", "pytorch_state_dict", "passed"], \
        done.stderr[-2000:]


@pytest.mark.parametrize("activation", ["softmax", "sigmoid"])
def test_the_predictor_activation_recovers_an_exports_probabilities(activation):
    from biom3d.core.exported import _as_logits

    logits = torch.randn(2, 3, 4, 5, 6) * 8  # confident outputs: probabilities near 0 and 1 included
    probs = torch.sigmoid(logits) if activation == "sigmoid" else torch.softmax(logits, dim=1)
    back = _as_logits(lambda x: probs, activation)(logits)
    again = torch.sigmoid(back) if activation == "sigmoid" else torch.softmax(back, dim=1)
    assert torch.allclose(again, probs, atol=1e-6)


def test_ct_normalisation_is_described_with_the_datasets_statistics():
    from bioimageio.spec.model import v0_5 as bmz

    from biom3d.export.bioimageio import _normalisation, _preprocessing, preprocess

    base = {"components": {"preprocessor": {"name": "core/seg-preprocess", "params": {"norm": "ct"}}},
            "fingerprint": {"intensity": [{"mean": 100.0, "std": 20.0, "p00_5": 40.0, "p99_5": 180.0}]}}
    norm = _normalisation(base)
    steps = _preprocessing(bmz, norm)
    assert [s.id for s in steps] == ["clip", "fixed_zero_mean_unit_variance"]
    assert (steps[0].kwargs.min, steps[0].kwargs.max) == (40.0, 180.0)
    assert (steps[1].kwargs.mean, steps[1].kwargs.std) == (100.0, 20.0)
    raw = np.array([0.0, 100.0, 140.0, 500.0], np.float32).reshape(1, 1, 1, 1, 4)
    assert preprocess(raw, norm).ravel().tolist() == [-3.0, 0.0, 2.0, 4.0]  # what biom3d's "ct" norm gives

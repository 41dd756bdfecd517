"""Exported networks as `biom3d predict` inputs, in place of a run folder, without the plugin that trained them.

An export is a network file and its *sidecar*, JSON with what inference needs: the run context (patch size,
classes, multilabel, channels, spacing), the data fingerprint, the preprocessor, predictor, post-processing,
reader and writer envelopes, and the versions of the plugins that provide them. Three containers:

- TorchScript: ``<name>.pt`` + ``<name>.pt.json`` (loaded with :func:`torch.jit.load`, plain torch);
- ONNX: ``<name>.onnx`` + ``<name>.onnx.json`` (run with ONNX Runtime, imported only for such a file);
- a bioimage.io package (zip): its ``rdf.yaml`` names the sidecar in ``config.biom3d.sidecar`` and lists the
  weights; read here with :mod:`zipfile` and ``yaml.safe_load`` (bioimageio.spec is not needed to predict).

:func:`onnxruntime_network` also runs a run folder's own network with ONNX Runtime (``--backend onnxruntime``).

Every exported network maps normalised ``(B, C, D, H, W)`` float32 to *probabilities* (softmax, or sigmoid
for multi-label runs), which is what a bioimage.io consumer or a DeepImageJ user expects. The predictor applies
its activation to what a network returns, so the network loaded here returns ``log p`` (softmax) or
``logit p`` (sigmoid), from which that activation gives back ``p`` exactly: the same tiling, blending, TTA and
post-processing as a run folder, unchanged.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import warnings
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from biom3d.core.errors import InputError, PluginError, RunError

log = logging.getLogger("biom3d")
SIDECAR_VERSION = 1
SIDECAR_KEY = "biom3d_export"  # the sidecar's format version: refused when newer than this core reads
#: file suffix -> export format
SUFFIXES = {".pt": "torchscript", ".ts": "torchscript", ".onnx": "onnx", ".zip": "bioimageio"}
RDF_NAMES = ("rdf.yaml", "bioimageio.yaml")
PACKAGE_WEIGHTS = ("torchscript", "onnx")  # what predict runs from a package, in the order tried
MAX_SIDECAR_BYTES = 16 * 2**20
REQUIRED = ("export", "context", "fingerprint", "components")


def sidecar_path(network_file: str | Path) -> Path:
    """The sidecar of a TorchScript or ONNX file: the file's name plus ``.json`` (``nuclei.onnx.json``)."""
    network_file = Path(network_file)
    return network_file.with_name(network_file.name + ".json")


def export_format(path: str | Path) -> str | None:
    """'torchscript', 'onnx' or 'bioimageio' when ``path`` is a file of that kind, else None (a run folder)."""
    path = Path(path)
    if path.is_dir():
        return None
    return SUFFIXES.get(path.suffix.lower())


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class Exported:
    """An export ready to predict: ``network`` (a ``torch.nn.Module``: normalised input -> logits) and its
    ``settings`` (the sidecar)."""

    path: Path
    format: str  # what the file is: torchscript, onnx or bioimageio
    weights: str  # what runs: torchscript or onnx
    settings: dict[str, Any]
    network: Any

    @property
    def context(self) -> dict[str, Any]:
        """The run context values the preprocessor, predictor and post-processing are built with."""
        ctx = dict(self.settings["context"])
        for key in ("patch_size", "aug_patch_size", "num_pools", "spacing"):
            if ctx.get(key) is not None:
                ctx[key] = tuple(ctx[key])
        return ctx

    def describe(self) -> str:
        """One line for the log: what the export is and what it was made from."""
        source = self.settings.get("source", {})
        epoch = source.get("epoch")
        made = f" of {source.get('run')} checkpoints/{source.get('checkpoint')}" if source.get("run") else ""
        return (f"{self.path} ({self.format} export{made}{f', epoch {epoch}' if epoch else ''}; "
                f"{'ONNX Runtime' if self.weights == 'onnx' else 'TorchScript'})")


def load(path: str | Path, *, device: Any = "cpu") -> Exported:
    """Read an export (TorchScript/ONNX file with its sidecar, or a bioimage.io zip) and load its network."""
    path = Path(path)
    kind = export_format(path)
    if kind is None:
        raise InputError(f"{path} is not an export: give a run folder, a TorchScript .pt or ONNX .onnx file "
                         "`biom3d export` wrote (with its .json beside it), or a bioimage.io .zip")
    if not path.is_file():
        raise InputError(f"{path} does not exist")
    if kind == "bioimageio":
        settings, weights, data = _read_package(path)
    else:
        settings, weights, data = _read_file(path, kind)
    activation = settings["export"].get("activation", "sigmoid" if settings["context"].get("multilabel") else "softmax")
    if weights == "onnx":
        network = _onnx_network(data, path, device, activation)
    else:
        network = _torchscript_network(data, path, device, activation)
    return Exported(path, kind, weights, settings, network)


def check_plugins(exported: Exported, registry, *, strict_versions: bool = False) -> None:
    """The plugins inference needs (preprocessor, predictor, post-processing, reader, writer; never the network's)
    against the installed ones: missing or not loaded is an error saying what to install, another version a
    warning (an error with ``strict_versions``)."""
    problems, pins, changed = [], [], []
    for plugin, info in exported.settings.get("plugins", {}).items():
        dist, version = info.get("dist"), info.get("version")
        present = registry.plugins.get(plugin)
        if present is None or present.state != "loaded":
            state = "not installed" if present is None else f"{present.state} ({present.reason})"
            problems.append(f"plugin '{plugin}' ({dist} {version}, for {', '.join(info.get('components', []))}) "
                            f"is {state}")
            pins.append(f"'{dist}=={version}'" if dist and present is None else None)
        elif version and present.version and present.version != version:
            changed.append(f"{plugin} ({present.dist}): the export used {version}, {present.version} is installed")
    if problems:
        fix = " ".join(p for p in pins if p)
        raise PluginError(f"export {exported.path} needs plugins that are not available: " + "; ".join(problems)
                          + (f". Fix: pip install {fix}" if fix else ""))
    if changed and strict_versions:
        raise PluginError(f"export {exported.path} was made with other plugin versions (--strict-versions): "
                          + "; ".join(changed))
    for line in changed:
        log.warning("export %s: %s; results may differ (--strict-versions refuses this)", exported.path, line)


# -- containers --------------------------------------------------------------------------------------------
def _read_file(path: Path, kind: str) -> tuple[dict[str, Any], str, bytes]:
    side = sidecar_path(path)
    if not side.is_file():
        raise InputError(f"{path} has no sidecar {side.name} beside it: biom3d predicts from a {kind} file "
                         "`biom3d export` wrote (the sidecar holds the patch size, normalisation and "
                         "post-processing); export the run again, or give the run folder")
    if side.stat().st_size > MAX_SIDECAR_BYTES:
        raise InputError(f"{side}: {side.stat().st_size} bytes is too large for a sidecar")
    settings = _parse_settings(side.read_bytes(), str(side))
    if settings["export"].get("format") != kind:
        raise InputError(f"{side} describes a {settings['export'].get('format')} export, not the {kind} file {path}")
    data = path.read_bytes()
    _check_digest(data, settings["export"].get("sha256"), path)
    return settings, kind, data


def _read_package(path: Path) -> tuple[dict[str, Any], str, bytes]:
    import yaml

    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise InputError(f"{path} is not a readable zip file ({exc}): give a bioimage.io package") from exc
    with zf:
        names = set(zf.namelist())
        rdf_name = next((n for n in RDF_NAMES if n in names), None)
        if rdf_name is None:
            raise InputError(f"{path} is not a bioimage.io package: it holds no {' or '.join(RDF_NAMES)}")
        rdf = yaml.safe_load(_member(zf, rdf_name, path, MAX_SIDECAR_BYTES)) or {}
        biom3d = (rdf.get("config") or {}).get("biom3d") or {}
        sidecar = biom3d.get("sidecar")
        if not sidecar or sidecar not in names:
            raise InputError(f"{path} is a bioimage.io package biom3d did not make (no config.biom3d.sidecar in "
                             f"{rdf_name}): biom3d predicts only from packages `biom3d export` wrote; run it with "
                             "a bioimage.io consumer (bioimageio.core, deepImageJ, ilastik) instead")
        settings = _parse_settings(_member(zf, sidecar, path, MAX_SIDECAR_BYTES), f"{path}:{sidecar}")
        weights = rdf.get("weights") or {}
        for kind in PACKAGE_WEIGHTS:
            entry = weights.get(kind)
            if entry and entry.get("source") in names:
                data = _member(zf, entry["source"], path)
                _check_digest(data, entry.get("sha256"), f"{path}:{entry['source']}")
                return settings, kind, data
    offered = ", ".join(sorted(weights)) or "none"
    raise InputError(f"{path} holds no weights biom3d can run without the network's plugin (it has: {offered}; "
                     f"needed: {' or '.join(PACKAGE_WEIGHTS)}); export the run again with --format bioimageio")


def _member(zf: zipfile.ZipFile, name: str, path: Path, limit: int | None = None) -> bytes:
    info = zf.getinfo(name)
    if limit is not None and info.file_size > limit:
        raise InputError(f"{path}: {name} is {info.file_size} bytes, more than this file may hold")
    return zf.read(info)


def _parse_settings(data: bytes, where: str) -> dict[str, Any]:
    try:
        settings = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{where} is not a biom3d export sidecar (not JSON: {exc})") from exc
    if not isinstance(settings, dict) or SIDECAR_KEY not in settings:
        raise InputError(f"{where} is not a biom3d export sidecar (no '{SIDECAR_KEY}' key)")
    version = settings[SIDECAR_KEY]
    if not isinstance(version, int) or version > SIDECAR_VERSION:
        raise InputError(f"{where} was written by a newer biom3d-export (sidecar version {version}; this "
                         f"biom3d-core reads up to {SIDECAR_VERSION}): upgrade biom3d-core")
    missing = [k for k in REQUIRED if not isinstance(settings.get(k), Mapping)]
    if missing:
        raise InputError(f"{where}: the sidecar lacks {', '.join(missing)}; export the run again")
    return settings


def _check_digest(data: bytes, expected: str | None, where: Any) -> None:
    if expected and sha256_bytes(data) != expected:
        raise RunError(f"{where} does not match the checksum recorded when it was exported: it was modified or "
                       "damaged (a partial copy?); copy it again or export the run again")


# -- networks ----------------------------------------------------------------------------------------------
def _torchscript_network(data: bytes, path: Path, device: Any, activation: str):
    import torch

    try:
        with warnings.catch_warnings():  # torch 2.13 deprecates TorchScript, the format consumers read
            warnings.simplefilter("ignore", DeprecationWarning)
            module = torch.jit.load(io.BytesIO(data), map_location=device)
    except Exception as exc:  # torch raises RuntimeError of many kinds for files it cannot read
        raise RunError(f"{path}: not a readable TorchScript file ({str(exc).splitlines()[0][:200]})") from exc
    return _as_logits(module, activation)


def onnxruntime_network(model, patch, in_channels: int, name: str):
    """``model`` (eval mode, logits) run by ONNX Runtime on the CPU (`biom3d predict --backend onnxruntime`):
    exported in memory at the patch size with a dynamic batch axis (batch 1 where that axis does not export),
    and checked against the model on one input; a graph that differs is an error, not a silent change."""
    import torch

    class FirstOutput(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = model

        def forward(self, x):
            out = self.net(x)
            return out[0] if isinstance(out, list | tuple) else out

    wrapped = FirstOutput().eval()
    x = torch.randn(1, in_channels, *patch, generator=torch.Generator().manual_seed(0))
    data, failure = None, None
    for axes in ({0: "batch"}, {}):
        buffer = io.BytesIO()
        try:
            with warnings.catch_warnings():  # the exporter's deprecation and tracer warnings
                warnings.simplefilter("ignore")
                torch.onnx.export(wrapped, (x,), buffer, dynamo=False, opset_version=17, input_names=["input"],
                                  output_names=["output"], dynamic_axes={"input": axes, "output": axes})
        except Exception as exc:  # the exporter's errors have many types
            failure = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            continue
        data = buffer.getvalue()
        break
    if data is None:
        raise RunError(f"--backend onnxruntime: the network {name} does not export to ONNX ({failure}); "
                       "predict with --backend torch")
    network = _onnx_module(_onnx_session(data, name, "cpu"))
    with torch.no_grad():
        diff = float((torch.softmax(network(x), 1) - torch.softmax(wrapped(x), 1)).abs().max())
    if not diff <= 1e-3:
        raise RunError(f"--backend onnxruntime: the ONNX graph of {name} differs from the network by {diff:.3g} "
                       "(its forward depends on the input's values); predict with --backend torch")
    return network


def _onnx_network(data: bytes, path: Path, device: Any, activation: str):
    return _as_logits(_onnx_module(_onnx_session(data, path, device)), activation)


def _onnx_session(data: bytes, path: Any, device: Any):
    import torch

    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise PluginError(f"{path}: ONNX models need ONNX Runtime: pip install 'biom3d-core[onnx]' (ONNX Runtime)") from exc
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    providers = ["CPUExecutionProvider"]
    if torch.device(device).type == "cuda":
        if "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        else:
            log.warning("%s: ONNX Runtime has no CUDA provider here (pip install onnxruntime-gpu): running on the CPU",
                        path)
    try:
        session = ort.InferenceSession(data, sess_options=options, providers=providers)
    except Exception as exc:  # onnxruntime's own exception types
        raise RunError(f"{path}: ONNX Runtime cannot load it ({str(exc).splitlines()[0][:200]})") from exc
    return session


def _onnx_module(session):
    """A ``torch.nn.Module`` running an ONNX Runtime session on CPU arrays."""
    import numpy as np
    import torch

    class OnnxNetwork(torch.nn.Module):
        """A graph exported with a fixed batch size runs a batch that many samples at a time."""

        def __init__(self):
            super().__init__()
            self.session = session
            self.input_name = session.get_inputs()[0].name
            batch = session.get_inputs()[0].shape[0]
            self.step = batch if isinstance(batch, int) else None

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            array = x.detach().float().cpu().numpy()
            chunks = np.split(array, range(self.step, len(array), self.step)) if self.step else [array]
            outs = [self.session.run(None, {self.input_name: np.ascontiguousarray(c)})[0] for c in chunks]
            return torch.from_numpy(outs[0] if len(outs) == 1 else np.concatenate(outs)).to(x.device)

    return OnnxNetwork()


def _as_logits(network, activation: str):
    """``network`` (-> probabilities) as a module returning what the predictor's activation maps back to them."""
    import torch

    if activation not in ("softmax", "sigmoid"):
        raise InputError(f"unknown activation {activation!r} in the export's sidecar (softmax or sigmoid)")

    class ExportedNetwork(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = network

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            probs = self.net(x)
            probs = probs[0] if isinstance(probs, list | tuple) else probs
            probs = probs.float()
            return torch.logit(probs) if activation == "sigmoid" else torch.log(probs)

    return ExportedNetwork().eval()

"""`biom3d export`: a trained run as TorchScript, ONNX and/or a bioimage.io package, each with what inference
needs beside it, recorded in the run folder's ``exports.json``.

Layout of ``--output``: a folder holding ``<name>.pt`` + ``<name>.pt.json``, ``<name>.onnx`` +
``<name>.onnx.json`` and ``<name>.bioimageio.zip`` (``<name>``: the run's config name); or, for one format,
the file itself when ``--output`` ends with that format's suffix. Nothing that exists is replaced without
``overwrite``; every file is written beside its target and renamed over it when complete.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import platform
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from biom3d.core.errors import InputError

log = logging.getLogger("biom3d")
FORMATS = ("torchscript", "onnx", "bioimageio")
SUFFIX = {"torchscript": ".pt", "onnx": ".onnx", "bioimageio": ".bioimageio.zip"}
EXPORTS = "exports.json"


@dataclass
class Written:
    """One export: its format and file (plus sidecar), and the record ``exports.json`` keeps of it."""

    format: str
    path: Path
    record: dict[str, Any]


def export(run_dir: str | Path, formats: Sequence[str], output: str | Path, *, checkpoint: str | None = None,
           opset: int | None = None, overwrite: bool = False, authors: Sequence[str] = (),
           license: str = "CC-BY-4.0", registry=None) -> list[Written]:
    """Export ``run_dir`` to each of ``formats`` under ``output``; returns what was written."""
    from biom3d.core.atomic import atomic_write
    from biom3d.core.discovery import get_registry
    from biom3d.core.exported import sidecar_path
    from biom3d.core.runs import trained_run
    from biom3d.export import graph

    formats = _formats(formats)
    run_dir, output = trained_run(run_dir), Path(output)
    targets = _targets(formats, output, _run_name(run_dir))
    _refuse_existing(targets, overwrite)  # before anything costly
    registry = registry or get_registry()
    run = _load(run_dir, registry, checkpoint)
    cfg = run.builder.config
    opset = graph.DEFAULT_OPSET if opset is None else opset
    activation = "sigmoid" if cfg.multilabel else "softmax"
    wrapper = graph.Probabilities(run.model, activation).eval()
    stride = graph.stride_of(run.model, cfg.num_pools)
    component = cfg.model.name
    probe = graph.probe(wrapper, cfg.patch_size, cfg.in_channels, stride, component)
    base = settings(run, registry, activation)
    graphs: dict[str, Any] = {}
    if {"torchscript", "bioimageio"} & set(formats):
        graphs["torchscript"] = graph.torchscript(wrapper, probe, component)
    if {"onnx", "bioimageio"} & set(formats):
        graphs["onnx"] = graph.onnx(wrapper, probe, component, opset)
    written = []
    for fmt in formats:
        target = targets[fmt]
        if fmt == "bioimageio":
            from biom3d.export import bioimageio

            info = bioimageio.package(target, run, wrapper, graphs, base, probe=probe, stride=stride, opset=opset,
                                      authors=authors, license=license)
            record = _record(fmt, target, None, base, info)
        else:
            g = graphs[fmt]
            side = dict(base, export=_export_info(fmt, target, g, opset, activation))
            atomic_write(target, lambda f, data=g.data: f.write(data), size=len(g.data))
            side_text = json.dumps(side, indent=2)
            atomic_write(sidecar_path(target), lambda f, text=side_text: f.write(text.encode("utf-8")))
            record = _record(fmt, target, sidecar_path(target), base, side["export"])
        log.info("export: %s -> %s", fmt, target)
        written.append(Written(fmt, target, record))
    _update_exports(run_dir, [w.record for w in written])
    return written


def settings(run, registry, activation: str) -> dict[str, Any]:
    """The sidecar, less its ``export`` entry: what predicting from the export needs, and where it came from."""
    from biom3d.core.exported import SIDECAR_KEY, SIDECAR_VERSION, sha256_file

    cfg = run.builder.config

    def env(e) -> dict[str, Any] | None:
        return None if e is None else {"name": e.name, "params": e.params}

    components = {"preprocessor": env(cfg.preprocessor), "predictor": env(cfg.predictor),
                  "postprocessors": [env(e) for e in cfg.postprocessors or []], "reader": env(cfg.reader),
                  "writer": env(cfg.writer)}
    used = [c["name"] for c in (components["preprocessor"], components["predictor"], *components["postprocessors"],
                                components["reader"], components["writer"]) if c]
    plugins_file = run.run_dir / "plugins.json"
    trained = json.loads(plugins_file.read_text(encoding="utf-8")).get("used", {}) if plugins_file.is_file() else {}
    return {
        SIDECAR_KEY: SIDECAR_VERSION,
        "context": {"num_classes": cfg.num_classes, "in_channels": cfg.in_channels, "multilabel": cfg.multilabel,
                    "patch_size": list(cfg.patch_size), "aug_patch_size": _list(cfg.aug_patch_size),
                    "num_pools": _list(cfg.num_pools), "spacing": _list(cfg.spacing)},
        "fingerprint": run.fingerprint,
        "components": components,
        "network": {"component": cfg.model.name, "params": cfg.model.params, "activation": activation},
        "plugins": registry.used_plugins(used),
        "trained_with": trained,
        "source": {"run": str(run.run_dir.resolve()), "checkpoint": run.checkpoint.name, "epoch": run.epoch,
                   "checkpoint_sha256": sha256_file(run.checkpoint), "config_name": cfg.name},
        "versions": versions(),
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


def versions() -> dict[str, str | None]:
    """Versions of what made the export (what a consumer may need to reproduce it)."""
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {"python": platform.python_version()}
    for dist in ("torch", "onnx", "onnxruntime", "bioimageio.spec", "biom3d-core", "biom3d-export"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = None
    return out


def read_exports(run_dir: str | Path) -> list[dict[str, Any]]:
    """The records of ``exports.json`` (empty when the run was never exported)."""
    path = Path(run_dir) / EXPORTS
    if not path.is_file():
        return []
    return json.loads(path.read_text(encoding="utf-8")).get("exports", [])


# -- helpers -----------------------------------------------------------------------------------------------
def _formats(formats: Sequence[str]) -> list[str]:
    chosen = list(dict.fromkeys(f.lower() for f in formats))
    if not chosen:
        raise InputError(f"choose at least one --format: {', '.join(FORMATS)}")
    unknown = [f for f in chosen if f not in FORMATS]
    if unknown:
        raise InputError(f"unknown export format {unknown[0]!r}: choose {', '.join(FORMATS)}")
    return chosen


def _run_name(run_dir: Path) -> str:
    """The run's config name (what the exported files are called)."""
    from biom3d.core.config import read_yaml
    from biom3d.core.runs import CONFIG

    if not (run_dir / CONFIG).is_file():
        raise InputError(f"{run_dir} is not a run folder (no {CONFIG}): give the folder `biom3d train` created")
    return str(read_yaml(run_dir / CONFIG).get("name") or "biom3d")


def _load(run_dir: Path, registry, checkpoint: str | None):
    from biom3d.core.stages.loading import load_run

    return load_run(run_dir, registry=registry, device="cpu", checkpoint=checkpoint)


def _targets(formats: list[str], output: Path, name: str) -> dict[str, Path]:
    """Where each format goes: the file ``output`` when it names one (one format, its suffix), else in it."""
    from biom3d.core.exported import export_format

    if len(formats) == 1 and not output.is_dir() and export_format(output) == formats[0]:
        return {formats[0]: output}
    if output.exists() and not output.is_dir():
        raise InputError(f"--output {output} is a file: give a folder, or for one format a file ending in its "
                         f"suffix ({', '.join(SUFFIX[f] for f in formats)})")
    return {f: output / f"{name}{SUFFIX[f]}" for f in formats}


def _refuse_existing(targets: dict[str, Path], overwrite: bool) -> None:
    from biom3d.core.exported import sidecar_path

    if overwrite:
        return
    existing = [p for fmt, t in targets.items() for p in ([t] if fmt == "bioimageio" else [t, sidecar_path(t)])
                if p.exists()]
    if existing:
        raise InputError(f"{existing[0]} already exists{f' (and {len(existing) - 1} more)' if len(existing) > 1 else ''}"
                         ": pass --overwrite to replace it, or choose another --output")


def _export_info(fmt: str, target: Path, g, opset: int, activation: str) -> dict[str, Any]:
    from biom3d.core.exported import sha256_bytes

    info = {"format": fmt, "file": target.name, "sha256": sha256_bytes(g.data), "bytes": len(g.data),
            "dynamic_spatial": g.dynamic, "verified_max_diff": g.max_diff, "activation": activation,
            "output": "probabilities", "input_name": "input", "output_name": "output",
            "input_axes": "bczyx", "batch": g.batch, "tracer_warnings": g.notes[:5]}
    if fmt == "onnx":
        info.update(opset=opset, exporter="torch.onnx.export (TorchScript-based, dynamo=False)")
    return info


def _record(fmt: str, target: Path, sidecar: Path | None, base: dict[str, Any], info: dict[str, Any]) -> dict[str, Any]:
    from biom3d.core.exported import sha256_file

    record = {"format": fmt, "path": str(target.resolve()), "sha256": sha256_file(target),
              "bytes": target.stat().st_size, "created": base["created"], "checkpoint": base["source"]["checkpoint"],
              "epoch": base["source"]["epoch"], "versions": base["versions"]}
    if sidecar is not None:
        record["sidecar"] = str(sidecar.resolve())
    for key in ("opset", "dynamic_spatial", "batch", "verified_max_diff", "validation"):
        if key in info:
            record[key] = info[key]
    return record


def _update_exports(run_dir: Path, records: list[dict[str, Any]]) -> None:
    """Add ``records`` to ``exports.json`` (an export to the same path replaces its old record); a run folder
    that cannot be written keeps the exports and says so."""
    from biom3d.core.atomic import atomic_write_text
    from biom3d.core.errors import Biom3dError

    paths = {r["path"] for r in records}
    kept = [r for r in read_exports(run_dir) if r.get("path") not in paths]
    try:
        atomic_write_text(run_dir / EXPORTS, json.dumps({"exports": kept + records}, indent=2))
    except Biom3dError as exc:
        log.warning("the exports were written but not recorded in %s: %s", run_dir / EXPORTS, exc)


def _list(value) -> list | None:
    return None if value is None else list(value)

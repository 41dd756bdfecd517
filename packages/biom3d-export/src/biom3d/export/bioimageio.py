"""A run as a bioimage.io model package (spec format 0.5), built and validated with ``bioimageio.spec``.

The package holds three weight formats of one network: ``pytorch_state_dict`` (the original; architecture
:func:`biom3d.export.architecture.build`, which needs biom3d and the network's plugin, listed in
``environment.yaml``), and ``torchscript`` and ``onnx`` converted from it (which need neither). Inputs are
``(batch, channel, z, y, x)``; spatial sizes are ``patch + n * stride`` when the graphs allow it, else the patch;
the output ``probabilities`` has the input's size with a halo of a quarter patch per side at overlap 0.5 (half
the overlap, what tiling with that overlap discards of each tile's border). Preprocessing is the run's, in the
spec's terms: biom3d's per-image z-score is ``zero_mean_unit_variance`` over ``z, y, x`` per channel; CT
normalisation is ``clip`` to the dataset's 0.5/99.5 percentiles then ``fixed_zero_mean_unit_variance`` with the
dataset's mean and std. Resampling to the training spacing has no spec term: the README and the axes' ``scale``
say the voxel size to resample to first. The test tensors are made by the model itself: a crop of a training
image, preprocessed as the spec says, through the exported network.

``config.biom3d.sidecar`` names ``biom3d.json``, the same sidecar the TorchScript and ONNX exports carry, so
`biom3d predict PACKAGE.zip` predicts exactly as the run folder does.
"""

from __future__ import annotations

import getpass
import json
import logging
import string
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from biom3d.export.graph import ExportError

log = logging.getLogger("biom3d")
SIDECAR = "biom3d.json"
EPS = 1e-6
CITATIONS = (
    ("Mougeot G., Safarbati S., Alégot H., Pouchin P., Field N., Almagro S., Pery É., Probst A., Tatout C., "
     "Evans D. E., Graumann K., Chausse F., Desset S. Biom3d, a modular framework to host and develop 3D "
     "segmentation methods. Medical Image Analysis (2026).", {"doi": "10.1016/j.media.2026.104184"}),
    ("Mougeot G. et al. Biom3d, a modular framework to host and develop 3D segmentation methods. HAL preprint "
     "hal-04747016 (2024).", {"url": "https://hal.science/hal-04747016"}),
)
BIOM3D_URL = "https://github.com/GuillaumeMougeot/biom3d"
# micrometres per unit -> the unit's name in the bioimage.io spec, for the axes' ``unit``
_SPACE_UNITS = {1e-6: "picometer", 1e-4: "angstrom", 1e-3: "nanometer", 1.0: "micrometer", 1e3: "millimeter",
                1e4: "centimeter", 1e6: "meter", 25400.0: "inch"}


def package(target: Path, run, wrapper: torch.nn.Module, graphs: dict[str, Any], base: dict[str, Any], *, probe,
            stride: Sequence[int] | None, opset: int, authors: Sequence[str] = (),
            license: str = "CC-BY-4.0") -> dict[str, Any]:
    """Write the package to ``target`` (atomically), validated; returns what ``exports.json`` records of it."""
    from bioimageio.spec import __version__ as spec_version
    from bioimageio.spec import save_bioimageio_package

    from biom3d.core.atomic import atomic_path

    cfg = run.builder.config
    patch = tuple(int(p) for p in cfg.patch_size)
    norm = _normalisation(base)
    raw = test_input(run, patch, norm)
    with torch.no_grad():
        probs = wrapper(torch.from_numpy(preprocess(raw, norm))).numpy().astype(np.float32)
    dynamic = bool(stride) and graphs["torchscript"].dynamic and graphs["onnx"].dynamic
    batch = graphs["onnx"].batch or graphs["torchscript"].batch  # one input description for every format
    sidecar = dict(base, export={
        "format": "bioimageio", "weights": ["torchscript", "onnx", "pytorch_state_dict"], "activation":
        base["network"]["activation"], "output": "probabilities", "dynamic_spatial": dynamic, "batch": batch,
        "opset": opset, "input_axes": "bczyx"})
    with tempfile.TemporaryDirectory(prefix="biom3d-bmz-") as tmp:
        folder = Path(tmp)
        files = _write_files(folder, run, wrapper, graphs, sidecar, raw, probs, norm)
        descr = _describe(cfg, base, files, norm, patch, stride if dynamic else None, batch, opset, authors, license,
                          run.predictor)
        with atomic_path(target, suffix=".zip") as tmp_zip:
            tmp_zip.unlink()  # the packer writes a new file
            save_bioimageio_package(descr, output_path=tmp_zip)
            summary = validate(tmp_zip)
    warnings = [f"{'.'.join(map(str, w.loc))}: {w.msg}" for d in summary.details for w in d.warnings]
    for line in warnings:
        log.info("bioimage.io validation note: %s", line)
    return {"validation": {"bioimageio.spec": spec_version, "status": summary.status, "warnings": warnings},
            "dynamic_spatial": dynamic, "batch": batch, "opset": opset}


def validate(path: Path):
    """``bioimageio.spec``'s validation of a package with its files read (no network needed); any error is an
    ExportError listing them. Returns the validation summary."""
    from bioimageio.spec import load_description

    descr = load_description(path, perform_io_checks=True)
    summary = descr.validation_summary
    errors = [f"{'.'.join(map(str, e.loc))}: {e.msg}" for d in summary.details for e in d.errors]
    if summary.status == "failed" or errors:
        raise ExportError(f"the bioimage.io package fails bioimageio.spec's validation: {'; '.join(errors[:8])}")
    return summary


def preprocess(raw: np.ndarray, norm: dict[str, Any]) -> np.ndarray:
    """What a bioimage.io consumer does to ``raw`` (B, C, D, H, W) with the package's preprocessing."""
    x = raw.astype(np.float64)
    if norm["kind"] == "zscore":
        mean = x.mean(axis=(2, 3, 4), keepdims=True)
        std = x.std(axis=(2, 3, 4), keepdims=True)
        x = (x - mean) / (std + EPS)
    elif norm["kind"] == "ct":
        shape = (1, -1, 1, 1, 1)
        if norm.get("clip") is not None:
            x = np.clip(x, *norm["clip"])
        x = (x - np.reshape(norm["mean"], shape)) / np.reshape(norm["std"], shape)
    return x.astype(np.float32)


def test_input(run, patch: tuple[int, ...], norm: dict[str, Any]) -> np.ndarray:
    """(1, C, *patch): the centre of the run's first preprocessed training image (CT-normalised runs: back in raw
    intensities), zero-padded where smaller; a seeded random volume when the run's data is gone."""
    cfg = run.builder.config
    folder = cfg.path(cfg.data.preprocessed)
    images = sorted((folder / "images").glob("**/*.npy")) if folder is not None else []
    if not images:
        log.warning("export: the run's preprocessed images are gone (%s): the bioimage.io test tensors are made "
                    "from a random volume", folder)
        return np.random.default_rng(0).normal(size=(1, cfg.in_channels, *patch)).astype(np.float32)
    array = np.load(images[0], mmap_mode="r")
    array = array if array.ndim == 4 else array[None]
    crop = []
    for size, p in zip(array.shape[1:], patch, strict=True):
        lo = max(0, (size - p) // 2)
        crop.append(slice(lo, lo + p))
    x = np.asarray(array[(slice(None), *crop)], dtype=np.float32)
    x = np.pad(x, [(0, 0)] + [(0, p - s) for s, p in zip(x.shape[1:], patch, strict=True)])
    if norm["kind"] == "ct":
        x = x * np.reshape(norm["std"], (-1, 1, 1, 1)) + np.reshape(norm["mean"], (-1, 1, 1, 1))
    return x[None].astype(np.float32)


# -- pieces ------------------------------------------------------------------------------------------------
def _normalisation(base: dict[str, Any]) -> dict[str, Any]:
    """The run's normalisation: z-score per image (``zscore``), CT's dataset statistics (``ct``), or unknown
    (a preprocessor without a ``norm`` param: not described, said in the README)."""
    params = (base["components"]["preprocessor"] or {}).get("params", {})
    kind = params.get("norm")
    if kind == "ct":
        stats = base["fingerprint"]["intensity"]
        clip = None
        if len(stats) == 1:
            clip = (float(stats[0]["p00_5"]), float(stats[0]["p99_5"]))
        else:
            log.warning("export: a %d-channel CT-normalised run: bioimage.io's clip takes one range for all "
                        "channels, so the per-channel clip is left to the user (README)", len(stats))
        return {"kind": "ct", "clip": clip, "mean": [float(s["mean"]) for s in stats],
                "std": [max(float(s["std"]), EPS) for s in stats]}
    if kind == "zscore":
        return {"kind": "zscore"}
    log.warning("export: the preprocessor %s has no z-score/CT setting: the package describes no normalisation",
                base["components"]["preprocessor"]["name"])
    return {"kind": "none"}


def _write_files(folder: Path, run, wrapper, graphs, sidecar, raw, probs, norm) -> dict[str, Path]:
    import yaml

    files = {"state_dict": folder / "weights.pt", "torchscript": folder / "weights_torchscript.pt",
             "onnx": folder / "weights.onnx", "sidecar": folder / SIDECAR, "env": folder / "environment.yaml",
             "test_input": folder / "test_input.npy", "test_output": folder / "test_output.npy",
             "readme": folder / "README.md", "cover": folder / "cover.png"}
    torch.save(wrapper.state_dict(), files["state_dict"])
    files["torchscript"].write_bytes(graphs["torchscript"].data)
    files["onnx"].write_bytes(graphs["onnx"].data)
    files["sidecar"].write_text(json.dumps(sidecar, indent=2), encoding="utf-8")
    files["env"].write_text(yaml.safe_dump(_environment(sidecar), sort_keys=False), encoding="utf-8")
    np.save(files["test_input"], raw)
    np.save(files["test_output"], probs)
    files["readme"].write_text(_readme(run, sidecar, norm), encoding="utf-8")
    from biom3d.export.cover import overlay_cover, snapshot_cover

    overlay_cover(files["cover"], preprocess(raw, norm)[0], probs[0], multilabel=run.builder.config.multilabel)
    snapshot = snapshot_cover(run.run_dir / "snapshots", folder / "cover_training.png")
    if snapshot is not None:
        files["snapshot"] = snapshot
    return files


def _space_unit(unit: str | None) -> str | None:
    """The bioimage.io name of the fingerprint's length unit (its spec spells units out); None: not a length."""
    from biom3d.core.units import um_per_unit

    return _SPACE_UNITS.get(um_per_unit(unit))


def _describe(cfg, base, files, norm, patch, stride, batch, opset, authors, license, predictor):
    from bioimageio.spec.model import v0_5 as bmz

    spacing = base["context"].get("spacing") or [1.0, 1.0, 1.0]
    unit = _space_unit(base["fingerprint"].get("spacing_unit")) if base["context"].get("spacing") else None
    axes_ids = ("z", "y", "x")
    overlap = float(getattr(predictor, "overlap", 0.5))  # a predictor without tiles: the halo of biom3d's default
    if stride is not None:
        sizes = [bmz.ParameterizedSize(min=p, step=s) for p, s in zip(patch, stride, strict=True)]
    else:
        sizes = list(patch)
    inputs = bmz.InputTensorDescr(
        id=bmz.TensorId("raw"),
        description=f"{cfg.in_channels}-channel volume at voxel size {' x '.join(f'{v:g}' for v in spacing)}"
                    f"{' ' + unit + 's' if unit else ''} (z, y, x)",
        axes=[bmz.BatchAxis(size=batch),
              bmz.ChannelAxis(channel_names=[bmz.Identifier(f"channel{c}") for c in range(cfg.in_channels)]),
              *[bmz.SpaceInputAxis(id=bmz.AxisId(a), size=s, scale=float(v), unit=unit) for a, s, v in zip(axes_ids, sizes, spacing, strict=True)]],
        test_tensor=bmz.FileDescr(source=files["test_input"]),
        data=bmz.IntervalOrRatioDataDescr(type="float32"),
        preprocessing=_preprocessing(bmz, norm),
    )
    names = [f"class{k}" for k in range(1, cfg.num_classes + 1)]
    channel_names = names if cfg.multilabel else ["background", *names]
    out_axes = []
    for a, p, v in zip(axes_ids, patch, spacing, strict=True):
        halo = int(p * overlap / 2)
        size = bmz.SizeReference(tensor_id=bmz.TensorId("raw"), axis_id=bmz.AxisId(a))
        out_axes.append(bmz.SpaceOutputAxisWithHalo(id=bmz.AxisId(a), size=size, halo=halo, scale=float(v), unit=unit)
                        if halo >= 1 else bmz.SpaceOutputAxis(id=bmz.AxisId(a), size=size, scale=float(v), unit=unit))
    outputs = bmz.OutputTensorDescr(
        id=bmz.TensorId("probabilities"),
        description=("sigmoid probability per class" if cfg.multilabel else "softmax probability per class"),
        axes=[bmz.BatchAxis(size=batch), bmz.ChannelAxis(channel_names=[bmz.Identifier(n) for n in channel_names]),
              *out_axes],
        test_tensor=bmz.FileDescr(source=files["test_output"]),
        data=bmz.IntervalOrRatioDataDescr(type="float32", range=(0.0, 1.0)),
    )
    net = base["network"]
    torch_version = bmz.Version(torch.__version__.split("+")[0])
    weights = bmz.WeightsDescr(
        pytorch_state_dict=bmz.PytorchStateDictWeightsDescr(
            source=files["state_dict"], pytorch_version=torch_version,
            architecture=bmz.ArchitectureFromLibraryDescr(
                import_from="biom3d.export.architecture", callable=bmz.Identifier("build"),
                kwargs={"component": net["component"], "params": net["params"], "context": base["context"],
                        "activation": net["activation"]}),
            dependencies=bmz.FileDescr(source=files["env"]),
            comment="the run's checkpoint; built through biom3d's registry (see environment.yaml)"),
        torchscript=bmz.TorchscriptWeightsDescr(source=files["torchscript"], pytorch_version=torch_version,
                                                parent="pytorch_state_dict", comment="torch.jit.trace, verified"),
        onnx=bmz.OnnxWeightsDescr(source=files["onnx"], opset_version=opset, parent="pytorch_state_dict",
                                  comment="torch.onnx.export (TorchScript-based), verified with ONNX Runtime"),
    )
    covers = [bmz.FileDescr(source=files[k]) for k in ("snapshot", "cover") if k in files]
    return bmz.ModelDescr(
        name=_name(cfg.name),
        description=(f"biom3d 3D segmentation of {cfg.num_classes} class(es) ({net['component']}), trained on "
                     f"{base['fingerprint'].get('num_images', '?')} image(s); outputs probabilities.")[:512],
        covers=covers,
        authors=[bmz.Author(name=a) for a in (authors or [_user()])],
        cite=[bmz.CiteEntry(text=text, **{k: (bmz.Doi(v) if k == "doi" else bmz.HttpUrl(v)) for k, v in ref.items()})
              for text, ref in CITATIONS],
        license=bmz.LicenseId(license),
        documentation=bmz.FileDescr(source=files["readme"]),
        tags=["3d", "pytorch", "semantic-segmentation", "biom3d", *(["unet"] if "unet" in net["component"] else [])],
        inputs=[inputs],
        outputs=[outputs],
        weights=weights,
        attachments=[bmz.FileDescr(source=files["sidecar"])],
        config={"biom3d": {"sidecar": SIDECAR, "sidecar_version": base["biom3d_export"], "run": base["source"]}},
    )


def _preprocessing(bmz, norm: dict[str, Any]) -> list:
    axes = [bmz.AxisId(a) for a in ("z", "y", "x")]
    if norm["kind"] == "zscore":
        return [bmz.ZeroMeanUnitVarianceDescr(kwargs=bmz.ZeroMeanUnitVarianceKwargs(axes=axes, eps=EPS))]
    if norm["kind"] != "ct":
        return []
    steps = []
    if norm.get("clip") is not None:
        steps.append(bmz.ClipDescr(kwargs=bmz.ClipKwargs(min=norm["clip"][0], max=norm["clip"][1])))
    if len(norm["mean"]) == 1:
        kwargs = bmz.FixedZeroMeanUnitVarianceKwargs(mean=norm["mean"][0], std=norm["std"][0])
    else:
        kwargs = bmz.FixedZeroMeanUnitVarianceAlongAxisKwargs(mean=norm["mean"], std=norm["std"],
                                                              axis=bmz.AxisId("channel"))
    steps.append(bmz.FixedZeroMeanUnitVarianceDescr(kwargs=kwargs))
    return steps


def _environment(sidecar: dict[str, Any]) -> dict[str, Any]:
    """A conda environment with what the state-dict weights' architecture imports."""
    v = sidecar["versions"]
    pins = [f"torch=={v['torch'].split('+')[0]}"]
    dists = {"biom3d-core": v.get("biom3d-core"), "biom3d-export": v.get("biom3d-export")}
    plugin = sidecar["network"]["component"].partition("/")[0]
    info = sidecar["trained_with"].get(plugin, {})
    if info.get("dist"):
        dists[info["dist"]] = info.get("version")
    pins += [f"{d}=={ver}" if ver else d for d, ver in dists.items()]
    return {"name": "biom3d", "channels": ["conda-forge", "nodefaults"],
            "dependencies": [f"python={v['python'].rsplit('.', 1)[0]}", "pip", {"pip": pins}]}


def _readme(run, sidecar: dict[str, Any], norm: dict[str, Any]) -> str:
    from biom3d.export.readme import readme

    return readme(run, sidecar, norm, CITATIONS, BIOM3D_URL)


def _name(name: str) -> str:
    """``biom3d <run name>`` in the characters a bioimage.io name may hold."""
    allowed = "".join(c if c in string.ascii_letters + string.digits + "_+- ()" else "-" for c in name)
    return f"biom3d {allowed}"[:64]


def _user() -> str:
    try:
        return getpass.getuser() or "biom3d user"
    except (KeyError, OSError):
        return "biom3d user"

"""The README.md of a bioimage.io package: what the model expects and returns, how to run it, how it was
trained and validated, and what to cite."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from biom3d.core.units import shown


def readme(run, sidecar: dict[str, Any], norm: dict[str, Any], citations, url: str) -> str:
    cfg = run.builder.config
    ctx, fp, net = sidecar["context"], sidecar["fingerprint"], sidecar["network"]
    spacing = ctx.get("spacing")
    unit = shown(fp.get("spacing_unit"))
    voxel = (" x ".join(f"{v:g}" for v in spacing) + (f" {unit}" if unit else "") if spacing
             else "the images' own (no spacing was recorded)")
    classes = ", ".join(f"class{k}" for k in range(1, cfg.num_classes + 1))
    outputs = (f"one sigmoid probability per class ({classes})" if cfg.multilabel
               else f"softmax probabilities of background, {classes}")
    decide = "threshold each channel at 0.5" if cfg.multilabel else "take the argmax over channels (0: background)"
    post = ", ".join(p["name"] for p in sidecar["components"]["postprocessors"]) or "none"
    lines = [
        f"# biom3d {cfg.name}",
        "",
        f"A 3D segmentation network trained with [biom3d]({url}): `{net['component']}`, "
        f"{cfg.in_channels} input channel(s), {cfg.num_classes} class(es){' (multi-label)' if cfg.multilabel else ''}.",
        "",
        "## Input",
        "",
        f"- Axes `batch, channel, z, y, x`, float32; trained on patches of {' x '.join(map(str, ctx['patch_size']))} "
        "voxels (z, y, x).",
        f"- Voxel size: resample images to {voxel} (z, y, x) first; biom3d does this itself, bioimage.io consumers "
        "do not.",
        f"- Normalisation (in the package's preprocessing): {_norm_text(norm)}.",
        "",
        "## Output",
        "",
        f"`probabilities`: {outputs}, same size as the input. To get a mask, {decide}; biom3d then applies: {post}.",
        "Predict large volumes tile by tile with the halo given in the description (a quarter patch per side at "
        "biom3d's overlap of 0.5, blended with a Hann window in biom3d).",
        "",
        "## Use",
        "",
        "- biom3d (tiling, Hann blending, flip test-time augmentation, resampling back, writers; the network's "
        "plugin is not needed): `biom3d predict this-package.zip --input images/ --output masks/`",
        "- Any bioimage.io consumer (bioimageio.core, deepImageJ, ilastik, QuPath): the `torchscript` and `onnx` "
        "weights need no biom3d; the `pytorch_state_dict` weights need the packages in `environment.yaml`.",
        "",
        "## Training",
        "",
        f"- {fp.get('num_images', '?')} training image(s), median shape {_shape(fp.get('median_shape'))}; "
        f"{cfg.train.epochs} epochs of {cfg.train.iters_per_epoch} batches of {cfg.train.batch_size}; weights of "
        f"`checkpoints/{sidecar['source']['checkpoint']}`"
        + (f" (epoch {sidecar['source']['epoch']})." if sidecar["source"].get("epoch") else "."),
        f"- Versions: {', '.join(f'{k} {v}' for k, v in sidecar['versions'].items() if v)}.",
        "",
        "## Validation",
        "",
        _validation(run.run_dir),
        "",
        "## Citation",
        "",
        *[f"- {text}" for text, _ in citations],
        "",
    ]
    return "\n".join(lines)


def _norm_text(norm: dict[str, Any]) -> str:
    if norm["kind"] == "zscore":
        return "zero mean, unit variance per image and channel (`zero_mean_unit_variance` over z, y, x)"
    if norm["kind"] == "ct":
        clip = "" if norm.get("clip") is None else f"clip to [{norm['clip'][0]:g}, {norm['clip'][1]:g}], then "
        extra = "" if norm.get("clip") is not None else " (clip each channel to the dataset's 0.5/99.5 percentiles first)"
        return f"{clip}subtract {norm['mean']} and divide by {norm['std']} (the training set's statistics){extra}"
    return "not described: prepare inputs as the run's preprocessor did"


def _shape(shape) -> str:
    return " x ".join(f"{v:g}" for v in shape) if shape else "?"


def _validation(run_dir: Path) -> str:
    """The best validation score of the run's ``log.csv``, or a note that it has none."""
    path = Path(run_dir) / "log.csv"
    rows = []
    if path.is_file():
        with open(path, encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f))
    metrics = [k for k in (rows[0] if rows else {}) if k.startswith("val_") and k != "val_loss"]
    if not metrics:
        return ("The run recorded no validation score. Validate on held-out images with `biom3d predict` then "
                "`biom3d eval --pred masks/ --truth truth/` (Dice and IoU per image).")
    key = metrics[0]
    best = max(rows, key=lambda r: float(r.get(key) or "nan") if r.get(key) else float("-inf"))
    return (f"Best `{key}` on the run's validation fold: {float(best[key]):.4f} (epoch {int(best['epoch']) + 1} of "
            f"{len(rows)}). Validate on your own held-out images with `biom3d predict` then `biom3d eval --pred "
            "masks/ --truth truth/` (Dice and IoU per image).")

"""The original's MODEL -> one of our networks. Why the mapping is not one-to-one:

- The model kwarg ``num_classes`` counts the background under softmax (NUM_CLASSES + 1); our networks derive
  their outputs again from the shared ``num_classes`` and ``multilabel``, so it is only checked.
- UNet3DVGGDeep ``factor`` -> ``base_features`` and ``max_features = 10 * factor`` (its stage widths were factor
  x 1, 2, 4, 8, 10); EffUNet -> ``efficientnet-b4``, the coefficients it hard-coded. ``use_deep`` defaulted to
  true in the original, so a missing kwarg means deep supervision.
- VGG3D / Eff3D were encoders for its self-supervised pre-training: the nearest here is a classifier.
"""

from __future__ import annotations

import re
from typing import Any

from biom3d.cli.legacy.job import Job, Kwargs, Raw, integer, shown
from biom3d.cli.legacy.mapping import MODELS, UNET


def model(job: Job, out: Raw) -> Raw:
    """Our model envelope for the original's MODEL; sets ``job.deep`` for the loss that follows."""
    name, kw = job.module("MODEL", MODELS)
    deep_flag = job.get("USE_DEEP_SUPERVISION")
    if name is None:
        job.deep = bool(deep_flag)
        job.notes.append(f"no MODEL: {UNET} with its defaults")
        return {"name": UNET, "params": {"deep_supervision": job.deep}}
    params: Raw = {}
    if name in ("UNet3DVGGDeep", "EffUNet"):
        qid = UNET if name == "UNet3DVGGDeep" else "models/effunet3d"
        _network(job, out, kw, params, classes=True)
        factor = kw.pop("factor")
        factor = None if factor is None else integer(factor, "MODEL.kwargs.factor")
        if name == "UNet3DVGGDeep":
            if factor is not None:
                params["base_features"], params["max_features"] = factor, 10 * factor
        else:
            params["encoder"] = "efficientnet-b4"
            job.notes.append("MODEL EffUNet -> models/effunet3d with encoder efficientnet-b4 (the original's "
                             "coefficients despite its name)")
            job.check_shared(out, "patch_size", kw.pop("patch_size"), "MODEL.kwargs.patch_size")
            if factor is not None and factor != 32:
                job.notes.append(f"MODEL.kwargs.factor={factor}: the EfficientNet decoder's last width has no "
                                 "equivalent, dropped")
        job.deep = bool(kw.pop("use_deep", True))  # the original's default was True
        params["deep_supervision"] = job.deep
        if deep_flag is not None and bool(deep_flag) != job.deep:
            job.notes.append(f"USE_DEEP_SUPERVISION={deep_flag} disagrees with MODEL.kwargs.use_deep; "
                             f"the model's value is used (deep_supervision: {job.deep})")
    elif name in ("VGG3D", "Eff3D"):
        qid = "models/vgg3d"
        job.notes.append(f"MODEL {name} (an encoder for the original's self-supervised pre-training) -> "
                         "models/vgg3d, a classifier: approximate")
        _network(job, out, kw, params, classes=False)
        if name == "VGG3D":
            factor = kw.pop("factor")
            if factor is not None:
                factor = integer(factor, "MODEL.kwargs.factor")
                params["base_features"], params["max_features"] = factor, 10 * factor
            emb, use_emb = kw.pop("emb_dim"), kw.pop("use_emb")
            if emb is not None and use_emb:
                params["num_classes"] = integer(emb, "MODEL.kwargs.emb_dim")
            kw.pop("use_head")
        else:
            _efficientnet(job, kw, params)
    else:  # SwinUNETR
        qid = "monai/swin-unetr"
        _swin(job, out, kw, params)
    kw.drop_rest(qid)
    job.mapped.append(f"MODEL {name} -> {qid}")
    return {"name": qid, "params": params}


def _network(job: Job, out: Raw, kw: Kwargs, params: Raw, *, classes: bool) -> None:
    job.check_shared(out, "num_pools", kw.pop("num_pools"), "MODEL.kwargs.num_pools", params)
    in_planes = kw.pop("in_planes")
    in_planes = None if in_planes is None else integer(in_planes, "MODEL.kwargs.in_planes")
    if in_planes is not None and in_planes != out["in_channels"]:
        params["in_channels"] = in_planes
        job.notes.append(f"MODEL.kwargs.in_planes={in_planes} differs from NUM_CHANNELS={out['in_channels']}; "
                         "kept in model.params.in_channels")
    if classes:
        _check_outputs(job, out, kw.pop("num_classes"), "MODEL.kwargs.num_classes")
    for ckpt in ("encoder_ckpt", "model_ckpt"):
        if kw.pop(ckpt):
            job.notes.append(f"MODEL.kwargs.{ckpt}: the original's weights do not load into our networks, "
                             "dropped; train from scratch or --finetune one of our runs")


def _check_outputs(job: Job, out: Raw, value: Any, where: str) -> None:
    """The original's model outputs count the background under softmax; ours are derived again."""
    if value is None:
        return
    expected = out["num_classes"] + (0 if job.multilabel else 1)
    if integer(value, where) != expected:
        job.notes.append(f"{where}={value} but NUM_CLASSES={out['num_classes']} with "
                         f"USE_SOFTMAX={not job.multilabel} means {expected} outputs; the network gets {expected}")


def _efficientnet(job: Job, kw: Kwargs, params: Raw) -> None:
    variant = kw.pop("model_name")
    if isinstance(variant, str) and re.fullmatch(r"efficientnet-b[0-7]", variant):
        params["encoder"] = variant
    elif variant is not None:
        job.notes.append(f"MODEL.kwargs.model_name={shown(variant)}: no such encoder here, efficientnet-b0 used")
        params["encoder"] = "efficientnet-b0"
    override = kw.pop("override_params") or {}
    if isinstance(override, dict) and override.get("num_classes") is not None:
        params["num_classes"] = integer(override["num_classes"], "MODEL.kwargs.override_params.num_classes")
    if kw.values.get("in_channels") is not None:
        params["in_channels"] = integer(kw.pop("in_channels"), "MODEL.kwargs.in_channels")


def _swin(job: Job, out: Raw, kw: Kwargs, params: Raw) -> None:
    job.check_shared(out, "patch_size", kw.pop("img_size"), "MODEL.kwargs.img_size")
    channels = kw.pop("in_channels")
    if channels is not None and integer(channels, "MODEL.kwargs.in_channels") != out["in_channels"]:
        job.notes.append(f"MODEL.kwargs.in_channels={channels} differs from NUM_CHANNELS; NUM_CHANNELS is used")
    _check_outputs(job, out, kw.pop("out_channels"), "MODEL.kwargs.out_channels")
    kw.pop("spatial_dims")
    for name in ("feature_size", "depths", "num_heads", "window_size", "drop_rate", "attn_drop_rate",
                 "dropout_path_rate", "use_checkpoint", "use_v2"):
        value = kw.pop(name)
        if value is not None:
            params[name] = value
    norm = kw.pop("norm_name")
    if isinstance(norm, str) and norm.lower() in ("instance", "batch"):
        params["norm"] = norm.lower()
    elif norm is not None:
        job.notes.append(f"MODEL.kwargs.norm_name={shown(norm)}: only instance or batch here, dropped")

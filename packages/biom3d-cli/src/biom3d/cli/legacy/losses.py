"""The original's TRAIN_LOSS, VAL_LOSS and metrics -> our losses and metrics. Why not one-to-one:

- DeepDiceBCE / DeepMSE ``alphas`` (lowest resolution first, unnormalised) -> deep-supervision's
  ``weight_factor`` / ``skip_lowest`` (full resolution first, normalised).
- DiceBCE follows the run's mode: under softmax the original computed Dice + cross-entropy, i.e. our dice-ce.
- The original's Dice and DiceBCE smoothed with 1 (ours default to 1e-5), so the smoothing is written out.
- Ours validates with the training loss, so a VAL_LOSS is only compared with it.
"""

from __future__ import annotations

from typing import Any

from biom3d.cli.legacy.job import Job, Kwargs, Raw, number, shown
from biom3d.cli.legacy.mapping import DEEP, LOSS_DEFAULT, METRICS, SOFT_DICE_ORIGINAL_SMOOTH


def loss(job: Job) -> Raw:
    """Our loss envelope, wrapped in (or unwrapped from) deep supervision to match the model's outputs."""
    name, kw = job.module("TRAIN_LOSS", METRICS)
    if name is None:
        job.notes.append(f"no TRAIN_LOSS: {LOSS_DEFAULT}")
        found: Raw = {"name": LOSS_DEFAULT, "params": {}}
    else:
        found = _loss(job, "TRAIN_LOSS", name, kw, job.notes)
        job.mapped.append(f"TRAIN_LOSS {name} -> {found['name']}")
    val_name, val_kw = job.module("VAL_LOSS", METRICS, notes=[])
    if val_name is not None and _loss(job, "VAL_LOSS", val_name, val_kw, []) != found:
        job.notes.append(f"VAL_LOSS {val_name}: ours validates with the training loss; dropped")
    if job.deep and found["name"] != DEEP:
        job.notes.append(f"deep supervision is on but TRAIN_LOSS {name} is a plain loss: wrapped in {DEEP} "
                         "(nnU-Net weights)")
        found = {"name": DEEP, "params": {"loss": found}}
    elif not job.deep and found["name"] == DEEP:
        job.notes.append(f"TRAIN_LOSS {name} expects deep-supervision outputs but the model gives one: "
                         f"its inner loss {found['params']['loss']['name']} is used")
        found = found["params"]["loss"]
    return found


def metrics(job: Job) -> list[Raw] | None:
    """Our metrics for TRAIN_METRICS and VAL_METRICS merged, without repeats; None when neither is set."""
    found: list[Raw] | None = None
    for key in ("TRAIN_METRICS", "VAL_METRICS"):
        group = job.get(key)
        if group is None:
            continue
        if not isinstance(group, dict):
            raise ValueError(f"{key}: expected a mapping of metric label -> {{fct, kwargs}}, got {shown(group)}")
        found = found or []
        for label, env in group.items():
            where = f"{key}.{label}"
            name, kw = job.envelope(where, env, METRICS)
            metric = _metric(job, where, name, kw, job.notes, loss=False)
            if metric is not None:
                job.mapped.append(f"{where} {name} -> {metric['name']}")
                if metric not in found:
                    found.append(metric)
    return found


def _loss(job: Job, where: str, name: str, kw: Kwargs, notes: list[str]) -> Raw:
    if name not in ("DeepDiceBCE", "DeepMSE"):
        found = _metric(job, where, name, kw, notes, loss=True)
        assert found is not None
        return found
    inner_name = "DiceBCE" if name == "DeepDiceBCE" else "MSE"
    inner_kw = Kwargs(f"{where}.kwargs.metric_kwargs", kw.pop("metric_kwargs"), notes)
    inner = _metric(job, where, inner_name, inner_kw, notes, loss=True)
    kw.pop("metric")
    params: Raw = {"loss": inner}
    params.update(_alpha_weights(kw.pop("alphas"), f"{where}.kwargs.alphas", notes))
    kw.drop_rest(DEEP)
    return {"name": DEEP, "params": params}


def _metric(job: Job, where: str, name: str, kw: Kwargs, notes: list[str], *, loss: bool) -> Raw | None:
    """Our id and params for the original's loss or metric ``name``; None when a metric has no equivalent."""
    softmax = kw.pop("use_softmax")
    if softmax is not None and bool(softmax) == job.multilabel:
        notes.append(f"{where}: use_softmax={softmax} disagrees with USE_SOFTMAX; it follows the run "
                     f"(multilabel: {job.multilabel})")
    if not kw.values.get("dim"):
        kw.pop("dim")  # (): the whole batch, as our batch_dice
    params: Raw = {}
    if name == "DiceCEnnUNet":
        qid = "models/dice-ce"
        soft = Kwargs(f"{kw.where}.soft_dice_kwargs", kw.pop("soft_dice_kwargs"), notes)
        params["batch_dice"] = bool(soft.pop("batch_dice", True))
        params["smooth"] = number(soft.pop("smooth", 1e-5), f"{soft.where}.smooth")
        params["include_background"] = bool(soft.pop("do_bg", False))
        soft.drop_rest(qid)
        for original, ours in (("weight_ce", "ce_weight"), ("weight_dice", "dice_weight")):
            if kw.values.get(original) is not None:
                params[ours] = number(kw.pop(original), f"{kw.where}.{original}")
        if kw.pop("ce_kwargs"):
            notes.append(f"{kw.where}.ce_kwargs: cross-entropy options are not carried, dropped")
        if kw.values.get("aggregate") == "sum":
            kw.pop("aggregate")
        for off in ("square_dice", "log_dice", "ignore_label"):
            if not kw.values.get(off, True):
                kw.pop(off)
    elif name == "DiceBCE":
        qid = "models/dice-bce" if job.multilabel else "models/dice-ce"
        params["smooth"] = SOFT_DICE_ORIGINAL_SMOOTH
        if not job.multilabel and loss:
            notes.append(f"{where} DiceBCE under softmax is Dice + cross-entropy: {qid}")
    elif name == "Dice":
        qid = "models/dice"
        params["smooth"] = SOFT_DICE_ORIGINAL_SMOOTH
    elif name == "IoU":
        qid = "models/iou"
        if loss:
            qid = "models/dice"
            notes.append(f"{where} IoU: our IoU is not a loss; the soft Dice loss models/dice is used")
    else:  # MSE, CE
        qid = {"MSE": "models/mse", "CE": "models/ce"}[name]
    if not loss and qid not in ("models/dice", "models/iou"):
        notes.append(f"{where} {name}: a loss, not a metric here; dropped")
        return None
    kw.drop_rest(qid)
    return {"name": qid, "params": params}


def _alpha_weights(alphas: Any, where: str, notes: list[str]) -> Raw:
    """deep-supervision params from the original's per-head ``alphas`` (lowest resolution first)."""
    if not isinstance(alphas, list | tuple) or not alphas:
        return {}
    full_first = [number(a, f"{where}[{i}]") for i, a in enumerate(alphas)][::-1]
    skip = len(full_first) - len(_rstrip_zeros(full_first))
    kept = full_first[: len(full_first) - skip] or full_first[:1]
    ratios = [b / a for a, b in zip(kept, kept[1:], strict=False) if a > 0]
    params: Raw = {"skip_lowest": min(skip, 8)}
    if len(kept) == 1:
        params["weight_factor"] = 0.5
    elif len(ratios) == len(kept) - 1 and all(abs(r - ratios[0]) < 1e-6 for r in ratios) and 0 < ratios[0] <= 1:
        params["weight_factor"] = ratios[0]
    else:
        params["weight_factor"] = 0.5
        notes.append(f"{where}={shown(list(alphas))}: not a geometric series; weight_factor 0.5 (approximate)")
        return params
    notes.append(f"{where}={shown(list(alphas))} (lowest resolution first) -> weight_factor {params['weight_factor']}, "
                 f"skip_lowest {params['skip_lowest']} (full resolution first, normalised to sum to 1)")
    return params


def _rstrip_zeros(values: list[float]) -> list[float]:
    end = len(values)
    while end > 1 and values[end - 1] == 0:
        end -= 1
    return values[:end]

"""Convert an original biom3d config (upper-case keys) into a current raw config, section by section.

The original kept each run's settings as the upper-case variables of its Python config, with every module
written ``{fct: Name, kwargs: {...}}`` and the kwargs handed verbatim to the function its register named. Those
kwargs repeat shared values (patch size, pooling, class count) and carry switches our components do not have,
so the import maps what has a meaning here, checks repeated values against the shared ones instead of copying
them, and reports everything else as a note; nothing unknown is passed on to fail validation. Why the mapping
is not one-to-one (networks and losses: see :mod:`.networks` and :mod:`.losses`):

- NUM_CLASSES -> ``num_classes``: both count foreground classes.
- USE_SOFTMAX false -> ``multilabel: true``: sigmoid outputs, one channel per class, as the original trained.
- MEDIAN_SPACING -> ``spacing``, reversed: the original stored (x, y, z), ours is in array order (D, H, W).
- IMG_PATH / MSK_PATH / FG_PATH / CSV_DIR are the original's preprocessed folders and split, a layout our
  datasets do not read: the raw folders are guessed from its ``<raw>_out`` naming so ``biom3d preprocess`` can
  be re-run. CLIPPING_BOUNDS / INTENSITY_MOMENTS -> ``norm: ct``, which our preprocessing recomputes.
- WEIGHT_DECAY -> 3e-5: the original used 3e-5 whenever the key existed, whatever its value. LR_START /
  LR_T_MAX / neither -> the poly / cosine / constant schedule the original then ran.
- The Seg postprocessor's ``keep_biggest_only`` / ``keep_big_only`` -> keep-largest / remove-small (Otsu).
- Callbacks: the original's fixed set (:data:`~.mapping.ORIGINAL_CALLBACKS`), written out in full so the
  config does not depend on the callbacks of whichever stack is installed.
"""

from __future__ import annotations

import re
import shlex
from typing import Any

from biom3d.cli.legacy import losses, networks
from biom3d.cli.legacy.job import MAX_LISTED, Job, Raw, first, integer, ints, number, shown
from biom3d.cli.legacy.mapping import (
    DATASET,
    DATASETS,
    ORIGINAL_CALLBACKS,
    ORIGINAL_OPTIMIZER,
    POSTPROCESSORS,
    PREDICTOR,
    PREDICTORS,
    PREPROCESS,
    PREPROCESSORS,
    RENAMED,
    SCHEDULER_CALLBACKS,
    SIGNATURE,
    SILENT_TOP,
    TRAINER,
    TRAINERS,
)
from biom3d.core.config import Config
from biom3d.core.upgrades import CURRENT_SCHEMA_VERSION


def import_legacy(raw: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Convert an original biom3d config (upper-case keys) to a current raw config, plus notes.

    The notes say which original modules became which of ours, what was mapped approximately and what was
    dropped, so the user can check the result before training. Raises ValueError, naming the key, on a module
    name the original's register did not have or a config that is not an original biom3d config.
    """
    if not isinstance(raw, dict):
        raise ValueError(f"an original biom3d config is a mapping, got {type(raw).__name__}")
    if not SIGNATURE & {RENAMED.get(k, k) for k in raw}:
        raise ValueError("not an original biom3d config: none of its upper-case keys (NUM_CLASSES, MODEL, "
                         "TRAIN_LOSS, IMG_PATH, PATCH_SIZE, ...) is present")
    job = Job(raw)
    out: Raw = {"schema_version": CURRENT_SCHEMA_VERSION}
    _provenance(job)
    _shared(job, out)
    out["preprocessor"] = _preprocessor(job, out)
    _data(job, out)
    out["train"] = _train(job)
    out["dataset"] = _dataset(job, out)
    out["model"] = networks.model(job, out)
    out["loss"] = losses.loss(job)
    metrics = losses.metrics(job)
    if metrics is not None:
        out["metrics"] = metrics
    out["trainer"] = _trainer(job)
    out["predictor"] = _predictor(job, out)
    out["postprocessors"] = _postprocessors(job)
    out["callbacks"] = _callbacks(job)
    _leftovers(job)
    if job.mapped:
        job.notes.insert(0, "modules: " + "; ".join(job.mapped))
    # Config's fields give the order `config show` prints; its defaults are not used: every slot is written
    return {key: out[key] for key in Config.model_fields if key in out}, job.notes


# -- sections -----------------------------------------------------------------------------------------------
def _provenance(job: Job) -> None:
    version, when = job.get("TRAINED_ON_VERSION"), job.get("TRAINED_AT_DATE_AND_HOUR")
    written = f"written by biom3d {version or '0.1.x'}" + (f" on {str(when)[:16]}" if when else "")
    job.notes.append(f"{written}; the original's trained weights (model/<DESC>.pth) are not converted: "
                     "this config trains a new model")


def _shared(job: Job, out: Raw) -> None:
    desc = str(job.get("DESC", "biom3d"))
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", desc).strip("-.") or "biom3d"
    name = name if name[0].isalnum() else "run-" + name
    if name != desc:
        job.notes.append(f"DESC={shown(desc)} -> name {shown(name)} (run names allow letters, digits, '_', '.', '-')")
    out["name"] = name
    log_dir = job.get("LOG_DIR")
    if isinstance(log_dir, str) and not re.match(r"^([A-Za-z]:)?[\\/]|.*\\", log_dir):
        out["runs_dir"] = log_dir  # relative to the working directory, in both
    elif log_dir is not None:
        job.notes.append(f"LOG_DIR={shown(log_dir)}: a path of the machine that trained; runs go to runs_dir "
                         "(default runs/) or --runs-dir")
    job.multilabel = not bool(job.get("USE_SOFTMAX", True))
    num_classes = job.get("NUM_CLASSES")
    if num_classes is None:
        num_classes = 1
        job.notes.append("NUM_CLASSES is missing: num_classes set to 1; check it")
    out["num_classes"] = integer(num_classes, "NUM_CLASSES")
    out["in_channels"] = integer(job.get("NUM_CHANNELS", 1), "NUM_CHANNELS")
    out["multilabel"] = job.multilabel
    is_2d = bool(job.get("IS_2D", False))
    for key, field, pad in (("PATCH_SIZE", "patch_size", 1), ("AUG_PATCH_SIZE", "aug_patch_size", 1),
                            ("NUM_POOLS", "num_pools", 0)):
        value = ints(job.get(key), key)
        if value is not None and len(value) == 2:  # a 2D run written by hand
            value = [pad, *value]
            job.notes.append(f"{key}: 2D value given a first axis of {pad} ({field}={value})")
        if value:
            out[field] = value
    if is_2d:
        job.notes.append("IS_2D: 2D images are read as 3D images of one slice; no setting is needed")


def _preprocessor(job: Job, out: Raw) -> Raw:
    name, kw = job.module("PREPROCESSOR", PREPROCESSORS)
    spacing = first(job.get("MEDIAN_SPACING"), kw.pop("median_spacing"))
    bounds = first(job.get("CLIPPING_BOUNDS"), kw.pop("clipping_bounds"))
    moments = first(job.get("INTENSITY_MOMENTS"), kw.pop("intensity_moments"))
    axis = first(job.get("CHANNEL_AXIS"), kw.pop("channel_axis"))
    job.check_shared(out, "in_channels", kw.pop("num_channels"), "PREPROCESSOR.kwargs.num_channels")
    kw.pop("is_2d")
    params: Raw = {"norm": "ct" if bounds or moments else "zscore"}
    if bounds or moments:
        job.notes.append(f"CLIPPING_BOUNDS={shown(bounds)} / INTENSITY_MOMENTS={shown(moments)} -> preprocessor.params.norm: ct; "
                         "`biom3d preprocess` recomputes the percentiles and moments from the masks' foreground")
    if axis is not None and (out["in_channels"] > 1 or integer(axis, "CHANNEL_AXIS") != 0):
        params["channel_axis"] = integer(axis, "CHANNEL_AXIS")  # the axis in the stored images, as ours means it
    if spacing and not isinstance(spacing, list | tuple):
        raise ValueError(f"MEDIAN_SPACING: expected a list of numbers, got {shown(spacing)}")
    if spacing and not job.raw.get("IS_2D") and len(spacing) == 3:
        xyz = [number(s, f"MEDIAN_SPACING[{i}]") for i, s in enumerate(spacing)]
        out["spacing"] = xyz[::-1]
        job.notes.append(f"MEDIAN_SPACING={xyz} (x, y, z) -> spacing={out['spacing']} (D, H, W)")
    kw.drop_rest(PREPROCESS)
    if name is not None:
        job.mapped.append(f"PREPROCESSOR {name} -> {PREPROCESS}")
    return {"name": PREPROCESS, "params": params}


def _data(job: Job, out: Raw) -> None:
    img, msk = job.get("IMG_PATH"), job.get("MSK_PATH")
    fg, csv = job.get("FG_PATH"), job.get("CSV_DIR")
    images, masks = _raw_folder(img), _raw_folder(msk)
    if img is None and msk is None:
        job.notes.append("IMG_PATH/MSK_PATH are not set: set data.images and data.masks to the raw folders, "
                         "then run `biom3d preprocess` and set data.preprocessed")
        return
    command = ["biom3d", "preprocess", "--images", images or "RAW_IMAGES", "--masks", masks or "RAW_MASKS",
               "--num-classes", str(out["num_classes"])]
    command += ["--multilabel"] if job.multilabel else []
    command += ["--norm", "ct"] if out["preprocessor"]["params"]["norm"] == "ct" else []
    if "channel_axis" in out["preprocessor"]["params"]:
        command += ["--channel-axis", str(out["preprocessor"]["params"]["channel_axis"])]
    command += ["--out", "PREPROCESSED"]
    what = (f"IMG_PATH={shown(img)} and MSK_PATH={shown(msk)} are the original's preprocessed folders (images, masks and "
            "foreground locations apart, its own normalisation), which our datasets do not read: ")
    if images and masks:
        out["data"] = {"images": images, "masks": masks}
        what += (f"data.images/data.masks are set to the raw folders its '<raw>_out' naming points to "
                 f"({shown(images)}, {shown(masks)}); check them, ")
    else:
        what += "set data.images/data.masks to the raw folders, "
    what += (f"then either `biom3d run` this config (it preprocesses data.images/data.masks itself) or run "
             f"`{shlex.join(command)}` and set data.preprocessed: PREPROCESSED (relative data paths now start "
             "at this config's folder, not the working directory)")
    job.notes.append(what)
    if fg is not None:
        job.notes.append(f"FG_PATH={shown(fg)}: not used; `biom3d preprocess` stores foreground locations itself")
    if csv is not None:
        job.notes.append(f"CSV_DIR={shown(csv)}: not used; `biom3d preprocess` writes its own folds.csv "
                         "(filename,fold), so the original's split and its hold-out test images (hold_out=1) "
                         "are not kept: move test images out of the raw folders or set data.folds")


def _train(job: Job) -> Raw:
    loader = job.get("TRAIN_DATALOADER_KWARGS", {})
    job.get("VAL_DATALOADER_KWARGS")
    train: Raw = {"epochs": integer(job.get("NB_EPOCHS", 1000), "NB_EPOCHS")}
    batch = first(job.get("BATCH_SIZE"), loader.get("batch_size") if isinstance(loader, dict) else None)
    if batch is not None:
        train["batch_size"] = integer(batch, "BATCH_SIZE")
    lr = job.get("LR_START")
    train["lr"] = number(lr, "LR_START") if lr is not None else 1e-2
    train.update(ORIGINAL_OPTIMIZER)
    decay = job.raw.get("WEIGHT_DECAY")
    train["weight_decay"] = 3e-5 if "WEIGHT_DECAY" in job.raw else 0.0
    job.used.add("WEIGHT_DECAY")
    if decay is not None and number(decay, "WEIGHT_DECAY") != 3e-5:
        job.notes.append(f"WEIGHT_DECAY={shown(decay)}: the original trained with 3e-5 whatever this value; "
                         "train.weight_decay: 3e-5 keeps what it did")
    train["scheduler"] = _scheduler(job)
    train["fold"] = integer(job.get("FOLD", 0), "FOLD")
    if train["fold"]:
        job.notes.append(f"FOLD={train['fold']} -> train.fold: it now picks among the folds `biom3d preprocess` "
                         "draws (5; fewer under 10 images), not the original's split")
    workers = first(job.get("NUM_WORKERS"), loader.get("num_workers") if isinstance(loader, dict) else None)
    if workers is not None:
        train["workers"] = integer(workers, "NUM_WORKERS")
    train["fp16"] = bool(job.get("USE_FP16", False))
    if job.get("VAL_EVERY_EPOCH") is not None:
        train["val_every"] = integer(job.get("VAL_EVERY_EPOCH"), "VAL_EVERY_EPOCH")
    return train


def _scheduler(job: Job) -> str:
    milestones, t_max = job.get("LR_MILESTONES"), job.get("LR_T_MAX")
    if milestones is not None:
        job.notes.append(f"LR_MILESTONES={shown(milestones)}: step schedules have no equivalent; train.scheduler: poly")
        return "poly"
    if t_max is not None:
        if t_max != job.raw.get("NB_EPOCHS"):
            job.notes.append(f"LR_T_MAX={shown(t_max)}: our cosine schedule spans all train.epochs")
        return "cosine"
    if "LR_START" in job.raw:
        return "poly"  # exponent 0.9, as ours
    job.notes.append("no LR_START: the original kept the learning rate constant; train.scheduler: constant")
    return "constant"


def _dataset(job: Job, out: Raw) -> Raw:
    key = "TRAIN_DATASET" if "TRAIN_DATASET" in job.raw else "TRAIN_DATALOADER"
    job.used.update({"TRAIN_DATASET", "TRAIN_DATALOADER"})
    name, kw = job.module(key, DATASETS)
    params: Raw = {}
    for original, ours, cast in (("use_aug", "augment", bool), ("fg_rate", "fg_rate", number),
                                 ("load_data", "preload", bool)):
        value = kw.pop(original)
        if value is not None:
            params[ours] = number(value, f"{kw.where}.{original}") if cast is number else cast(value)
    steps = kw.pop("nbof_steps")
    if steps is not None:
        out["train"]["iters_per_epoch"] = integer(steps, f"{key}.kwargs.nbof_steps")
    job.check_shared(out, "patch_size", kw.pop("patch_size"), f"{key}.kwargs.patch_size")
    job.check_shared(out, "aug_patch_size", kw.pop("aug_patch_size"), f"{key}.kwargs.aug_patch_size")
    for shared in ("img_path", "msk_path", "fg_path", "img_dir", "msk_dir", "fg_dir", "batch_size", "folds_csv",
                   "fold", "val_split", "train", "use_softmax"):
        kw.pop(shared)  # shared values, mapped from their upper-case keys
    kw.drop_rest(DATASET)
    if name is not None:
        job.mapped.append(f"{key} {name} -> {DATASET}")
        if name != "SegPatchFast":
            job.notes.append(f"{key} {name} -> {DATASET}: ours samples and augments patches its own way "
                             "(TorchIO); approximate")
    val_key = "VAL_DATASET" if "VAL_DATASET" in job.raw else "VAL_DATALOADER"
    job.used.update({"VAL_DATASET", "VAL_DATALOADER"})
    val_name, val_kw = job.module(val_key, DATASETS)  # its other kwargs repeat the training ones
    val_steps = val_kw.pop("nbof_steps")
    if val_name is None:
        out["train"]["val_iters"] = 0
        job.notes.append("no VAL_DATASET: the original did not validate; train.val_iters: 0")
    elif val_steps is not None:
        out["train"]["val_iters"] = integer(val_steps, f"{val_key}.kwargs.nbof_steps")
    return {"name": DATASET, "params": params}


def _trainer(job: Job) -> Raw:
    name, kw = job.module("TRAINER", TRAINERS)
    kw.drop_rest(TRAINER)
    if name is not None:
        job.mapped.append(f"TRAINER {name} -> {TRAINER}")
    _, val_kw = job.module("VALIDATER", TRAINERS)
    val_kw.drop_rest(f"{TRAINER} (it validates itself)")
    return {"name": TRAINER, "params": {}}


def _predictor(job: Job, out: Raw) -> Raw:
    name, kw = job.module("PREDICTOR", PREDICTORS)
    params: Raw = {"tta": bool(kw.pop("tta", False))}  # the original's default was off
    if name == "Seg":
        job.notes.append(f"PREDICTOR Seg (whole image at once) -> {PREDICTOR}, which tiles the image")
    patch = ints(kw.pop("patch_size"), "PREDICTOR.kwargs.patch_size")
    if patch is not None and patch != out.get("patch_size"):
        params["patch_size"] = patch
    for deprecated in ("use_softmax", "keep_biggest_only", "enable_autocast", "num_workers", "conserve_size"):
        kw.pop(deprecated)  # deprecated in the original, or how rather than what
    kw.drop_rest(PREDICTOR)
    if name is not None:
        job.mapped.append(f"PREDICTOR {name} -> {PREDICTOR}")
    return {"name": PREDICTOR, "params": params}


def _postprocessors(job: Job) -> list[Raw]:
    name, kw = job.module("POSTPROCESSOR", POSTPROCESSORS)
    softmax = kw.pop("use_softmax")
    if softmax is not None and bool(softmax) == job.multilabel:
        job.notes.append(f"POSTPROCESSOR.kwargs.use_softmax={softmax} disagrees with USE_SOFTMAX; it follows the run")
    if kw.pop("force_softmax"):
        job.notes.append("POSTPROCESSOR.kwargs.force_softmax: sigmoid outputs are written as multi-label masks "
                         "here, not as a label map")
    if kw.pop("return_logit"):
        job.notes.append("POSTPROCESSOR.kwargs.return_logit: predictions are masks here; dropped")
    kw.pop("is_2d")
    steps: list[Raw] = [{"name": "core/threshold" if job.multilabel else "core/argmax", "params": {}}]
    biggest, big = kw.pop("keep_biggest_only"), kw.pop("keep_big_only")
    if biggest:
        steps.append({"name": "core/keep-largest", "params": {}})
        job.notes.append("POSTPROCESSOR.kwargs.keep_biggest_only -> core/keep-largest: the largest component "
                         "per class (the original preferred the largest centred one)")
        if big:
            job.notes.append("POSTPROCESSOR.kwargs.keep_big_only is ignored with keep_biggest_only, as the "
                             "original did")
    elif big:
        steps.append({"name": "core/remove-small", "params": {}})
    kw.drop_rest("the postprocessors")
    if name is not None:
        job.mapped.append(f"POSTPROCESSOR {name} -> {', '.join(s['name'] for s in steps)}")
    return steps


def _callbacks(job: Job) -> list[Raw]:
    every = integer(job.get("SAVE_MODEL_EVERY_EPOCH", 1), "SAVE_MODEL_EVERY_EPOCH")
    save_best = bool(job.get("SAVE_BEST", True))
    images = bool(job.get("USE_IMAGE_CLBK", False))
    image_every = integer(job.get("SAVE_IMAGE_EVERY_EPOCH", every), "SAVE_IMAGE_EVERY_EPOCH")
    callbacks: list[Raw] = []
    for name in ORIGINAL_CALLBACKS:
        if name == "checkpoint":
            callbacks.append({"name": "core/checkpoint", "params": {"every": every, "save_best": save_best}})
        elif name == "snapshots":
            if images:
                callbacks.append({"name": "core/snapshots", "params": {"every": image_every}})
        else:
            callbacks.append({"name": f"core/{name}", "params": {}})
    on = [key for key in SCHEDULER_CALLBACKS if job.get(key)]
    if on:
        job.notes.append(f"{', '.join(on)}: the original's training schedulers have no equivalent; dropped")
    for key in ("INITIAL_WD", "FINAL_WD", "INITIAL_MOMENTUM"):
        job.get(key)
    return callbacks


def _leftovers(job: Job) -> None:
    left = [k for k in job.raw if k not in job.used and k not in SILENT_TOP]
    if left:
        more = f" and {len(left) - MAX_LISTED} more" if len(left) > MAX_LISTED else ""
        names = ", ".join(k[:80] if isinstance(k, str) else shown(k) for k in left[:MAX_LISTED])
        job.notes.append(f"no equivalent, dropped: {names}{more}")


def _raw_folder(path: Any) -> str | None:
    """The raw folder the original's default ``<raw>_out`` naming points to, if it follows it."""
    if not isinstance(path, str):
        return None
    stripped = path.rstrip("/\\")
    return stripped[: -len("_out")] if stripped.endswith("_out") and len(stripped) > len("_out") else None

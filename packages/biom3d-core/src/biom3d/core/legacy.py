"""Import a run config written by the original biom3d (0.1.x) into the current format.

The original kept each run's settings in ``<run>/log/config.yaml``: the upper-case variables of its Python
config, with every module written ``{fct: Name, kwargs: {...}}`` and the kwargs handed verbatim to the function
its register named. Those kwargs repeat shared values (patch size, pooling, class count) and carry switches our
components do not have, so the import maps what has a meaning here, checks repeated values against the shared
ones instead of copying them, and reports everything else as a note; nothing unknown is passed on to fail
validation. Why the mapping is not one-to-one:

- NUM_CLASSES -> ``num_classes``: both count foreground classes. The model kwarg ``num_classes`` adds the
  background under softmax; our networks derive their outputs again, so it is only checked.
- USE_SOFTMAX false -> ``multilabel: true``: sigmoid outputs, one channel per class, as the original trained.
- MEDIAN_SPACING -> ``spacing``, reversed: the original stored (x, y, z), ours is in array order (D, H, W).
- IMG_PATH / MSK_PATH / FG_PATH / CSV_DIR are the original's preprocessed folders and split, a layout our
  datasets do not read: the raw folders are guessed from its ``<raw>_out`` naming so ``biom3d preprocess`` can
  be re-run. CLIPPING_BOUNDS / INTENSITY_MOMENTS -> ``norm: ct``, which our preprocessing recomputes.
- WEIGHT_DECAY -> 3e-5: the original used 3e-5 whenever the key existed, whatever its value. LR_START /
  LR_T_MAX / neither -> the poly / cosine / constant schedule the original then ran.
- UNet3DVGGDeep ``factor`` -> ``base_features`` and ``max_features = 10 * factor`` (its stage widths were factor
  x 1, 2, 4, 8, 10); EffUNet -> ``efficientnet-b4``, the coefficients it hard-coded. ``use_deep`` defaulted to
  true in the original, so a missing kwarg means deep supervision.
- DeepDiceBCE / DeepMSE ``alphas`` (lowest resolution first, unnormalised) -> deep-supervision's
  ``weight_factor`` / ``skip_lowest`` (full resolution first, normalised). DiceBCE follows the run's mode:
  under softmax the original computed Dice + cross-entropy, i.e. our dice-ce.
- The Seg postprocessor's ``keep_biggest_only`` / ``keep_big_only`` -> keep-largest / remove-small (Otsu).

:func:`read_legacy_yaml` reads the file: the original wrote it with ``yaml.dump``, so tuples, numpy values
(configs built in notebooks) and ``AttrDict`` appear as ``!!python/...`` tags; they are decoded as plain data and
nothing is ever imported or called.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import yaml

from biom3d.core.config import DEFAULT_CALLBACKS, Config
from biom3d.core.upgrades import CURRENT_SCHEMA_VERSION

Raw = dict[str, Any]

# The original's register, per config key that picks a module from it.
DATASETS = ("SegPatchFast", "Torchio", "BatchGen")
MODELS = ("UNet3DVGGDeep", "EffUNet", "VGG3D", "Eff3D", "SwinUNETR")
METRICS = ("Dice", "DiceBCE", "DiceCEnnUNet", "IoU", "MSE", "CE", "DeepMSE", "DeepDiceBCE")
TRAINERS = ("SegTrain", "SegVal", "SegPatchTrain", "SegPatchVal")
PREPROCESSORS = ("Seg",)
PREDICTORS = ("Seg", "SegPatch")
POSTPROCESSORS = ("Seg",)

DEEP = "models/deep-supervision"
SOFT_DICE_ORIGINAL_SMOOTH = 1.0  # the original's Dice and DiceBCE smoothed with 1, ours default to 1e-5
RENAMED = {"IMG_DIR": "IMG_PATH", "MSK_DIR": "MSK_PATH", "FG_DIR": "FG_PATH"}  # keys of configs before 0.1
SIGNATURE = {"NUM_CLASSES", "MODEL", "TRAIN_LOSS", "IMG_PATH", "PATCH_SIZE", "NB_EPOCHS", "TRAIN_DATASET", "DESC"}
ORIGINAL_OPTIMIZER = {"optimizer": "sgd", "momentum": 0.99, "nesterov": True, "grad_clip": 12.0}
SILENT_TOP = {"PIN_MEMORY", "IS_2D"}  # no effect here, nothing to report


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
    job = _Import(raw)
    return job.run(), job.notes


def read_legacy_yaml(path: str | Path) -> dict[str, Any]:
    """Read an original ``config.yaml``; ``!!python/...`` tags become plain data and are never executed."""
    path = Path(path)
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_LegacyLoader)  # a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path}: the top level must be a mapping, got {type(data).__name__}")
    return data


# -- conversion ---------------------------------------------------------------------------------------------
class _Kwargs:
    """A module's kwargs, taken one by one; whatever nobody took is reported, never passed on."""

    def __init__(self, where: str, values: Any, notes: list[str]):
        if values is None:
            values = {}
        if not isinstance(values, dict):
            raise ValueError(f"{where}: expected a mapping of keyword arguments, got {values!r}")
        self.where, self.values, self.notes = where, dict(values), notes

    def pop(self, name: str, default: Any = None) -> Any:
        return self.values.pop(name, default)

    def drop_rest(self, target: str) -> None:
        self.values.pop("name", None)  # a logging label
        if self.values:
            shown = ", ".join(f"{k}={v!r}" for k, v in self.values.items())
            self.notes.append(f"{self.where}: {shown}: no equivalent in {target}, dropped")
            self.values.clear()


class _Import:
    def __init__(self, raw: Raw):
        self.raw = {RENAMED.get(k, k): v for k, v in raw.items()}
        self.used: set[str] = set()
        self.notes: list[str] = []
        self.mapped: list[str] = []
        self.multilabel = False
        self.deep: bool | None = None  # the model's deep supervision; None: the model has no such switch

    def run(self) -> Raw:
        out: Raw = {"schema_version": CURRENT_SCHEMA_VERSION}
        self._provenance()
        self._shared(out)
        out["preprocessor"] = self._preprocessor(out)
        self._data(out)
        out["train"] = self._train()
        out["dataset"] = self._dataset(out)
        out["model"] = self._model(out)
        out["loss"] = self._losses()
        metrics = self._metrics()
        if metrics is not None:
            out["metrics"] = metrics
        out["trainer"] = self._trainer()
        out["predictor"] = self._predictor(out)
        out["postprocessors"] = self._postprocessors()
        out["callbacks"] = self._callbacks()
        self._leftovers()
        if self.mapped:
            self.notes.insert(0, "modules: " + "; ".join(self.mapped))
        return {key: out[key] for key in Config.model_fields if key in out}  # the order `config show` prints

    # -- helpers ------------------------------------------------------------------------------------------
    def get(self, key: str, default: Any = None) -> Any:
        self.used.add(key)
        value = self.raw.get(key, default)
        return default if value is None else value

    def module(self, key: str, known: tuple[str, ...], *, notes: list[str] | None = None) -> tuple[str | None, _Kwargs]:
        """(name, kwargs) of the ``{fct, kwargs}`` module under ``key``; (None, empty) when absent."""
        env = self.get(key)
        if env is None:
            return None, _Kwargs(key, {}, self.notes if notes is None else notes)
        return self.envelope(key, env, known, notes=notes)

    def envelope(self, where: str, env: Any, known: tuple[str, ...], *,
                 notes: list[str] | None = None) -> tuple[str, _Kwargs]:
        if not isinstance(env, dict) or "fct" not in env:
            raise ValueError(f"{where}: expected a module written {{fct: Name, kwargs: {{...}}}}, got {env!r}")
        name = env["fct"]
        if name not in known:
            raise ValueError(f"{where}: unknown original module {name!r}; the original biom3d knew: {', '.join(known)}")
        return name, _Kwargs(f"{where}.kwargs", env.get("kwargs"), self.notes if notes is None else notes)

    def check_shared(self, out: Raw, field: str, value: Any, where: str, params: Raw | None = None) -> None:
        """A repeated shared value: fills the shared field if unset, else kept in ``params`` when it differs."""
        value = _ints(value)
        if value is None:
            return
        if out.get(field) is None:
            out[field] = value
        elif value != out[field]:
            if params is None:
                self.notes.append(f"{where}={value} differs from the shared {field}={out[field]}; the shared value is used")
            else:
                params[field] = value
                self.notes.append(f"{where}={value} differs from the shared {field}={out[field]}; kept in model.params.{field}")

    # -- sections -----------------------------------------------------------------------------------------
    def _provenance(self) -> None:
        version, when = self.get("TRAINED_ON_VERSION"), self.get("TRAINED_AT_DATE_AND_HOUR")
        written = f"written by biom3d {version or '0.1.x'}" + (f" on {str(when)[:16]}" if when else "")
        self.notes.append(f"{written}; the original's trained weights (model/<DESC>.pth) are not converted: "
                          "this config trains a new model")

    def _shared(self, out: Raw) -> None:
        desc = str(self.get("DESC", "biom3d"))
        name = re.sub(r"[^A-Za-z0-9_.-]+", "-", desc).strip("-.") or "biom3d"
        name = name if name[0].isalnum() else "run-" + name
        if name != desc:
            self.notes.append(f"DESC={desc!r} -> name {name!r} (run names allow letters, digits, '_', '.', '-')")
        out["name"] = name
        log_dir = self.get("LOG_DIR")
        if isinstance(log_dir, str) and not re.match(r"^([A-Za-z]:)?[\\/]|.*\\", log_dir):
            out["runs_dir"] = log_dir  # relative to the working directory, in both
        elif log_dir is not None:
            self.notes.append(f"LOG_DIR={log_dir!r}: a path of the machine that trained; runs go to runs_dir "
                              "(default runs/) or --runs-dir")
        self.multilabel = not bool(self.get("USE_SOFTMAX", True))
        num_classes = self.get("NUM_CLASSES")
        if num_classes is None:
            num_classes = 1
            self.notes.append("NUM_CLASSES is missing: num_classes set to 1; check it")
        out["num_classes"] = int(num_classes)
        out["in_channels"] = int(self.get("NUM_CHANNELS", 1))
        out["multilabel"] = self.multilabel
        is_2d = bool(self.get("IS_2D", False))
        for key, field, pad in (("PATCH_SIZE", "patch_size", 1), ("AUG_PATCH_SIZE", "aug_patch_size", 1),
                                ("NUM_POOLS", "num_pools", 0)):
            value = _ints(self.get(key))
            if value is not None and len(value) == 2:  # a 2D run written by hand
                value = [pad, *value]
                self.notes.append(f"{key}: 2D value given a first axis of {pad} ({field}={value})")
            if value:
                out[field] = value
        if is_2d:
            self.notes.append("IS_2D: 2D images are read as 3D images of one slice; no setting is needed")

    def _preprocessor(self, out: Raw) -> Raw:
        name, kw = self.module("PREPROCESSOR", PREPROCESSORS)
        spacing = _first(self.get("MEDIAN_SPACING"), kw.pop("median_spacing"))
        bounds = _first(self.get("CLIPPING_BOUNDS"), kw.pop("clipping_bounds"))
        moments = _first(self.get("INTENSITY_MOMENTS"), kw.pop("intensity_moments"))
        axis = _first(self.get("CHANNEL_AXIS"), kw.pop("channel_axis"))
        self.check_shared(out, "in_channels", kw.pop("num_channels"), "PREPROCESSOR.kwargs.num_channels")
        kw.pop("is_2d")
        params: Raw = {"norm": "ct" if bounds or moments else "zscore"}
        if bounds or moments:
            self.notes.append(f"CLIPPING_BOUNDS={bounds} / INTENSITY_MOMENTS={moments} -> preprocessor.params.norm: ct; "
                              "`biom3d preprocess` recomputes the percentiles and moments from the masks' foreground")
        if axis is not None and (out["in_channels"] > 1 or int(axis) != 0):
            params["channel_axis"] = int(axis)  # the axis in the stored images, as ours means it
        if spacing and not self.raw.get("IS_2D") and len(spacing) == 3:
            out["spacing"] = [float(s) for s in reversed(spacing)]
            self.notes.append(f"MEDIAN_SPACING={[float(s) for s in spacing]} (x, y, z) -> spacing={out['spacing']} (D, H, W)")
        kw.drop_rest("core/seg-preprocess")
        if name is not None:
            self.mapped.append(f"PREPROCESSOR {name} -> core/seg-preprocess")
        return {"name": "core/seg-preprocess", "params": params}

    def _data(self, out: Raw) -> None:
        img, msk = self.get("IMG_PATH"), self.get("MSK_PATH")
        fg, csv = self.get("FG_PATH"), self.get("CSV_DIR")
        images, masks = _raw_folder(img), _raw_folder(msk)
        if img is None and msk is None:
            self.notes.append("IMG_PATH/MSK_PATH are not set: set data.images and data.masks to the raw folders, "
                              "then run `biom3d preprocess` and set data.preprocessed")
            return
        command = ["biom3d", "preprocess", "--images", images or "RAW_IMAGES", "--masks", masks or "RAW_MASKS",
                   "--num-classes", str(out["num_classes"])]
        command += ["--multilabel"] if self.multilabel else []
        command += ["--norm", "ct"] if out["preprocessor"]["params"]["norm"] == "ct" else []
        if "channel_axis" in out["preprocessor"]["params"]:
            command += ["--channel-axis", str(out["preprocessor"]["params"]["channel_axis"])]
        command += ["--out", "PREPROCESSED"]
        what = (f"IMG_PATH={img!r} and MSK_PATH={msk!r} are the original's preprocessed folders (images, masks and "
                "foreground locations apart, its own normalisation), which our datasets do not read: ")
        if images and masks:
            out["data"] = {"images": images, "masks": masks}
            what += (f"data.images/data.masks are set to the raw folders its '<raw>_out' naming points to "
                     f"({images!r}, {masks!r}); check them, ")
        else:
            what += "set data.images/data.masks to the raw folders, "
        what += (f"then either `biom3d run` this config (it preprocesses data.images/data.masks itself) or run "
                 f"`{shlex.join(command)}` and set data.preprocessed: PREPROCESSED (relative data paths now start "
                 "at this config's folder, not the working directory)")
        self.notes.append(what)
        if fg is not None:
            self.notes.append(f"FG_PATH={fg!r}: not used; `biom3d preprocess` stores foreground locations itself")
        if csv is not None:
            self.notes.append(f"CSV_DIR={csv!r}: not used; `biom3d preprocess` writes its own folds.csv "
                              "(filename,fold), so the original's split and its hold-out test images (hold_out=1) "
                              "are not kept: move test images out of the raw folders or set data.folds")

    def _train(self) -> Raw:
        loader = self.get("TRAIN_DATALOADER_KWARGS", {})
        self.get("VAL_DATALOADER_KWARGS")
        train: Raw = {"epochs": int(self.get("NB_EPOCHS", 1000))}
        batch = _first(self.get("BATCH_SIZE"), loader.get("batch_size") if isinstance(loader, dict) else None)
        if batch is not None:
            train["batch_size"] = int(batch)
        lr = self.get("LR_START")
        train["lr"] = float(lr) if lr is not None else 1e-2
        train.update(ORIGINAL_OPTIMIZER)
        decay = self.raw.get("WEIGHT_DECAY")
        train["weight_decay"] = 3e-5 if "WEIGHT_DECAY" in self.raw else 0.0
        self.used.add("WEIGHT_DECAY")
        if decay is not None and float(decay) != 3e-5:
            self.notes.append(f"WEIGHT_DECAY={decay}: the original trained with 3e-5 whatever this value; "
                              "train.weight_decay: 3e-5 keeps what it did")
        train["scheduler"] = self._scheduler()
        train["fold"] = int(self.get("FOLD", 0))
        if train["fold"]:
            self.notes.append(f"FOLD={train['fold']} -> train.fold: it now picks among the folds `biom3d preprocess` "
                              "draws (5; fewer under 10 images), not the original's split")
        workers = _first(self.get("NUM_WORKERS"), loader.get("num_workers") if isinstance(loader, dict) else None)
        if workers is not None:
            train["workers"] = int(workers)
        train["fp16"] = bool(self.get("USE_FP16", False))
        if self.get("VAL_EVERY_EPOCH") is not None:
            train["val_every"] = int(self.get("VAL_EVERY_EPOCH"))
        return train

    def _scheduler(self) -> str:
        milestones, t_max = self.get("LR_MILESTONES"), self.get("LR_T_MAX")
        if milestones is not None:
            self.notes.append(f"LR_MILESTONES={milestones}: step schedules have no equivalent; train.scheduler: poly")
            return "poly"
        if t_max is not None:
            if t_max != self.raw.get("NB_EPOCHS"):
                self.notes.append(f"LR_T_MAX={t_max}: our cosine schedule spans all train.epochs")
            return "cosine"
        if "LR_START" in self.raw:
            return "poly"  # exponent 0.9, as ours
        self.notes.append("no LR_START: the original kept the learning rate constant; train.scheduler: constant")
        return "constant"

    def _dataset(self, out: Raw) -> Raw:
        key = "TRAIN_DATASET" if "TRAIN_DATASET" in self.raw else "TRAIN_DATALOADER"
        self.used.update({"TRAIN_DATASET", "TRAIN_DATALOADER"})
        name, kw = self.module(key, DATASETS)
        params: Raw = {}
        for original, ours, cast in (("use_aug", "augment", bool), ("fg_rate", "fg_rate", float),
                                     ("load_data", "preload", bool)):
            value = kw.pop(original)
            if value is not None:
                params[ours] = cast(value)
        steps = kw.pop("nbof_steps")
        if steps is not None:
            out["train"]["iters_per_epoch"] = int(steps)
        self.check_shared(out, "patch_size", kw.pop("patch_size"), f"{key}.kwargs.patch_size")
        self.check_shared(out, "aug_patch_size", kw.pop("aug_patch_size"), f"{key}.kwargs.aug_patch_size")
        for shared in ("img_path", "msk_path", "fg_path", "img_dir", "msk_dir", "fg_dir", "batch_size", "folds_csv",
                       "fold", "val_split", "train", "use_softmax"):
            kw.pop(shared)  # shared values, mapped from their upper-case keys
        kw.drop_rest("io/patch-dataset")
        if name is not None:
            self.mapped.append(f"{key} {name} -> io/patch-dataset")
            if name != "SegPatchFast":
                self.notes.append(f"{key} {name} -> io/patch-dataset: ours samples and augments patches its own way "
                                  "(TorchIO); approximate")
        val_key = "VAL_DATASET" if "VAL_DATASET" in self.raw else "VAL_DATALOADER"
        self.used.update({"VAL_DATASET", "VAL_DATALOADER"})
        val_name, val_kw = self.module(val_key, DATASETS)  # its other kwargs repeat the training ones
        val_steps = val_kw.pop("nbof_steps")
        if val_name is None:
            out["train"]["val_iters"] = 0
            self.notes.append("no VAL_DATASET: the original did not validate; train.val_iters: 0")
        elif val_steps is not None:
            out["train"]["val_iters"] = int(val_steps)
        return {"name": "io/patch-dataset", "params": params}

    def _model(self, out: Raw) -> Raw:
        name, kw = self.module("MODEL", MODELS)
        deep_flag = self.get("USE_DEEP_SUPERVISION")
        if name is None:
            self.deep = bool(deep_flag)
            self.notes.append("no MODEL: models/unet3d-vgg-deep with its defaults")
            return {"name": "models/unet3d-vgg-deep", "params": {"deep_supervision": self.deep}}
        params: Raw = {}
        if name in ("UNet3DVGGDeep", "EffUNet"):
            qid = "models/unet3d-vgg-deep" if name == "UNet3DVGGDeep" else "models/effunet3d"
            self._network(out, kw, params, classes=True)
            factor = kw.pop("factor")
            if name == "UNet3DVGGDeep":
                if factor is not None:
                    params["base_features"], params["max_features"] = int(factor), 10 * int(factor)
            else:
                params["encoder"] = "efficientnet-b4"
                self.notes.append("MODEL EffUNet -> models/effunet3d with encoder efficientnet-b4 (the original's "
                                  "coefficients despite its name)")
                self.check_shared(out, "patch_size", kw.pop("patch_size"), "MODEL.kwargs.patch_size")
                if factor is not None and int(factor) != 32:
                    self.notes.append(f"MODEL.kwargs.factor={factor}: the EfficientNet decoder's last width has no "
                                      "equivalent, dropped")
            self.deep = bool(kw.pop("use_deep", True))  # the original's default was True
            params["deep_supervision"] = self.deep
            if deep_flag is not None and bool(deep_flag) != self.deep:
                self.notes.append(f"USE_DEEP_SUPERVISION={deep_flag} disagrees with MODEL.kwargs.use_deep; "
                                  f"the model's value is used (deep_supervision: {self.deep})")
        elif name in ("VGG3D", "Eff3D"):
            qid = "models/vgg3d"
            self.notes.append(f"MODEL {name} (an encoder for the original's self-supervised pre-training) -> "
                              "models/vgg3d, a classifier: approximate")
            self._network(out, kw, params, classes=False)
            if name == "VGG3D":
                factor = kw.pop("factor")
                if factor is not None:
                    params["base_features"], params["max_features"] = int(factor), 10 * int(factor)
                emb, use_emb = kw.pop("emb_dim"), kw.pop("use_emb")
                if emb is not None and use_emb:
                    params["num_classes"] = int(emb)
                kw.pop("use_head")
            else:
                self._efficientnet(kw, params)
        else:  # SwinUNETR
            qid = "monai/swin-unetr"
            self._swin(out, kw, params)
        kw.drop_rest(qid)
        self.mapped.append(f"MODEL {name} -> {qid}")
        return {"name": qid, "params": params}

    def _network(self, out: Raw, kw: _Kwargs, params: Raw, *, classes: bool) -> None:
        self.check_shared(out, "num_pools", kw.pop("num_pools"), "MODEL.kwargs.num_pools", params)
        in_planes = kw.pop("in_planes")
        if in_planes is not None and int(in_planes) != out["in_channels"]:
            params["in_channels"] = int(in_planes)
            self.notes.append(f"MODEL.kwargs.in_planes={in_planes} differs from NUM_CHANNELS={out['in_channels']}; "
                              "kept in model.params.in_channels")
        if classes:
            self._check_outputs(out, kw.pop("num_classes"), "MODEL.kwargs.num_classes")
        for ckpt in ("encoder_ckpt", "model_ckpt"):
            if kw.pop(ckpt):
                self.notes.append(f"MODEL.kwargs.{ckpt}: the original's weights do not load into our networks, "
                                  "dropped; train from scratch or --finetune one of our runs")

    def _check_outputs(self, out: Raw, value: Any, where: str) -> None:
        """The original's model outputs count the background under softmax; ours are derived again."""
        if value is None:
            return
        expected = out["num_classes"] + (0 if self.multilabel else 1)
        if int(value) != expected:
            self.notes.append(f"{where}={value} but NUM_CLASSES={out['num_classes']} with "
                              f"USE_SOFTMAX={not self.multilabel} means {expected} outputs; the network gets {expected}")

    def _efficientnet(self, kw: _Kwargs, params: Raw) -> None:
        variant = kw.pop("model_name")
        if isinstance(variant, str) and re.fullmatch(r"efficientnet-b[0-7]", variant):
            params["encoder"] = variant
        elif variant is not None:
            self.notes.append(f"MODEL.kwargs.model_name={variant!r}: no such encoder here, efficientnet-b0 used")
            params["encoder"] = "efficientnet-b0"
        override = kw.pop("override_params") or {}
        if isinstance(override, dict) and override.get("num_classes") is not None:
            params["num_classes"] = int(override["num_classes"])
        if kw.values.get("in_channels") is not None:
            params["in_channels"] = int(kw.pop("in_channels"))

    def _swin(self, out: Raw, kw: _Kwargs, params: Raw) -> None:
        self.check_shared(out, "patch_size", kw.pop("img_size"), "MODEL.kwargs.img_size")
        channels = kw.pop("in_channels")
        if channels is not None and int(channels) != out["in_channels"]:
            self.notes.append(f"MODEL.kwargs.in_channels={channels} differs from NUM_CHANNELS; NUM_CHANNELS is used")
        self._check_outputs(out, kw.pop("out_channels"), "MODEL.kwargs.out_channels")
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
            self.notes.append(f"MODEL.kwargs.norm_name={norm!r}: only instance or batch here, dropped")

    def _losses(self) -> Raw:
        name, kw = self.module("TRAIN_LOSS", METRICS)
        if name is None:
            self.notes.append("no TRAIN_LOSS: models/dice-ce")
            loss: Raw = {"name": "models/dice-ce", "params": {}}
        else:
            loss = self._loss("TRAIN_LOSS", name, kw, self.notes)
            self.mapped.append(f"TRAIN_LOSS {name} -> {loss['name']}")
        val_name, val_kw = self.module("VAL_LOSS", METRICS, notes=[])
        if val_name is not None and self._loss("VAL_LOSS", val_name, val_kw, []) != loss:
            self.notes.append(f"VAL_LOSS {val_name}: ours validates with the training loss; dropped")
        if self.deep and loss["name"] != DEEP:
            self.notes.append(f"deep supervision is on but TRAIN_LOSS {name} is a plain loss: wrapped in {DEEP} "
                              "(nnU-Net weights)")
            loss = {"name": DEEP, "params": {"loss": loss}}
        elif not self.deep and loss["name"] == DEEP:
            self.notes.append(f"TRAIN_LOSS {name} expects deep-supervision outputs but the model gives one: "
                              f"its inner loss {loss['params']['loss']['name']} is used")
            loss = loss["params"]["loss"]
        return loss

    def _loss(self, where: str, name: str, kw: _Kwargs, notes: list[str]) -> Raw:
        if name not in ("DeepDiceBCE", "DeepMSE"):
            found = self._metric(where, name, kw, notes, loss=True)
            assert found is not None
            return found
        inner_name = "DiceBCE" if name == "DeepDiceBCE" else "MSE"
        inner_kw = _Kwargs(f"{where}.kwargs.metric_kwargs", kw.pop("metric_kwargs"), notes)
        inner = self._metric(where, inner_name, inner_kw, notes, loss=True)
        kw.pop("metric")
        params: Raw = {"loss": inner}
        params.update(_alpha_weights(kw.pop("alphas"), f"{where}.kwargs.alphas", notes))
        kw.drop_rest(DEEP)
        return {"name": DEEP, "params": params}

    def _metric(self, where: str, name: str, kw: _Kwargs, notes: list[str], *, loss: bool) -> Raw | None:
        """Our id and params for the original's loss or metric ``name``; None when a metric has no equivalent."""
        softmax = kw.pop("use_softmax")
        if softmax is not None and bool(softmax) == self.multilabel:
            notes.append(f"{where}: use_softmax={softmax} disagrees with USE_SOFTMAX; it follows the run "
                         f"(multilabel: {self.multilabel})")
        if not kw.values.get("dim"):
            kw.pop("dim")  # (): the whole batch, as our batch_dice
        params: Raw = {}
        if name == "DiceCEnnUNet":
            qid = "models/dice-ce"
            soft = _Kwargs(f"{kw.where}.soft_dice_kwargs", kw.pop("soft_dice_kwargs"), notes)
            params["batch_dice"] = bool(soft.pop("batch_dice", True))
            params["smooth"] = float(soft.pop("smooth", 1e-5))
            params["include_background"] = bool(soft.pop("do_bg", False))
            soft.drop_rest(qid)
            for original, ours in (("weight_ce", "ce_weight"), ("weight_dice", "dice_weight")):
                if kw.values.get(original) is not None:
                    params[ours] = float(kw.pop(original))
            if kw.pop("ce_kwargs"):
                notes.append(f"{kw.where}.ce_kwargs: cross-entropy options are not carried, dropped")
            if kw.values.get("aggregate") == "sum":
                kw.pop("aggregate")
            for off in ("square_dice", "log_dice", "ignore_label"):
                if not kw.values.get(off, True):
                    kw.pop(off)
        elif name == "DiceBCE":
            qid = "models/dice-bce" if self.multilabel else "models/dice-ce"
            params["smooth"] = SOFT_DICE_ORIGINAL_SMOOTH
            if not self.multilabel and loss:
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

    def _metrics(self) -> list[Raw] | None:
        found: list[Raw] | None = None
        for key in ("TRAIN_METRICS", "VAL_METRICS"):
            group = self.get(key)
            if group is None:
                continue
            if not isinstance(group, dict):
                raise ValueError(f"{key}: expected a mapping of metric label -> {{fct, kwargs}}, got {group!r}")
            found = found or []
            for label, env in group.items():
                where = f"{key}.{label}"
                name, kw = self.envelope(where, env, METRICS)
                metric = self._metric(where, name, kw, self.notes, loss=False)
                if metric is not None:
                    self.mapped.append(f"{where} {name} -> {metric['name']}")
                    if metric not in found:
                        found.append(metric)
        return found

    def _trainer(self) -> Raw:
        name, kw = self.module("TRAINER", TRAINERS)
        kw.drop_rest("core/seg-trainer")
        if name is not None:
            self.mapped.append(f"TRAINER {name} -> core/seg-trainer")
        _, val_kw = self.module("VALIDATER", TRAINERS)
        val_kw.drop_rest("core/seg-trainer (it validates itself)")
        return {"name": "core/seg-trainer", "params": {}}

    def _predictor(self, out: Raw) -> Raw:
        name, kw = self.module("PREDICTOR", PREDICTORS)
        params: Raw = {"tta": bool(kw.pop("tta", False))}  # the original's default was off
        if name == "Seg":
            self.notes.append("PREDICTOR Seg (whole image at once) -> core/sliding-window, which tiles the image")
        patch = _ints(kw.pop("patch_size"))
        if patch is not None and patch != out.get("patch_size"):
            params["patch_size"] = patch
        for deprecated in ("use_softmax", "keep_biggest_only", "enable_autocast", "num_workers", "conserve_size"):
            kw.pop(deprecated)  # deprecated in the original, or how rather than what
        kw.drop_rest("core/sliding-window")
        if name is not None:
            self.mapped.append(f"PREDICTOR {name} -> core/sliding-window")
        return {"name": "core/sliding-window", "params": params}

    def _postprocessors(self) -> list[Raw]:
        name, kw = self.module("POSTPROCESSOR", POSTPROCESSORS)
        softmax = kw.pop("use_softmax")
        if softmax is not None and bool(softmax) == self.multilabel:
            self.notes.append(f"POSTPROCESSOR.kwargs.use_softmax={softmax} disagrees with USE_SOFTMAX; it follows the run")
        if kw.pop("force_softmax"):
            self.notes.append("POSTPROCESSOR.kwargs.force_softmax: sigmoid outputs are written as multi-label masks "
                              "here, not as a label map")
        if kw.pop("return_logit"):
            self.notes.append("POSTPROCESSOR.kwargs.return_logit: predictions are masks here; dropped")
        kw.pop("is_2d")
        steps: list[Raw] = [{"name": "core/threshold" if self.multilabel else "core/argmax", "params": {}}]
        biggest, big = kw.pop("keep_biggest_only"), kw.pop("keep_big_only")
        if biggest:
            steps.append({"name": "core/keep-largest", "params": {}})
            self.notes.append("POSTPROCESSOR.kwargs.keep_biggest_only -> core/keep-largest: the largest component "
                              "per class (the original preferred the largest centred one)")
            if big:
                self.notes.append("POSTPROCESSOR.kwargs.keep_big_only is ignored with keep_biggest_only, as the "
                                  "original did")
        elif big:
            steps.append({"name": "core/remove-small", "params": {}})
        kw.drop_rest("the postprocessors")
        if name is not None:
            self.mapped.append(f"POSTPROCESSOR {name} -> {', '.join(s['name'] for s in steps)}")
        return steps

    def _callbacks(self) -> list[Raw]:
        every = int(self.get("SAVE_MODEL_EVERY_EPOCH", 1))
        save_best = bool(self.get("SAVE_BEST", True))
        images = bool(self.get("USE_IMAGE_CLBK", False))
        image_every = int(self.get("SAVE_IMAGE_EVERY_EPOCH", every))
        callbacks: list[Raw] = []
        for name in DEFAULT_CALLBACKS:
            if name == "checkpoint":
                callbacks.append({"name": "core/checkpoint", "params": {"every": every, "save_best": save_best}})
            elif name == "snapshots":
                if images:
                    callbacks.append({"name": "core/snapshots", "params": {"every": image_every}})
            else:
                callbacks.append({"name": f"core/{name}", "params": {}})
        schedulers = ("USE_FG_CLBK", "USE_WD_CLBK", "USE_MOMENTUM_CLBK", "USE_OVERLAP_CLBK",
                      "USE_GLOBAL_SCALE_CLBK", "USE_DATASET_SIZE_CLBK")
        on = [key for key in schedulers if self.get(key)]
        if on:
            self.notes.append(f"{', '.join(on)}: the original's training schedulers have no equivalent; dropped")
        for key in ("INITIAL_WD", "FINAL_WD", "INITIAL_MOMENTUM"):
            self.get(key)
        return callbacks

    def _leftovers(self) -> None:
        left = [k for k in self.raw if k not in self.used and k not in SILENT_TOP]
        if left:
            self.notes.append(f"no equivalent, dropped: {', '.join(left)}")


# -- small conversions --------------------------------------------------------------------------------------
def _first(*values: Any) -> Any:
    """The first value that is set (None and empty lists mean unset, as in the original's defaults)."""
    return next((v for v in values if v is not None and v != []), None)


def _ints(value: Any) -> list[int] | None:
    if value is None or value == []:
        return None
    if not isinstance(value, list | tuple):
        return value  # left for validation to report
    try:
        return [int(v) for v in value]
    except (TypeError, ValueError):
        return list(value)


def _raw_folder(path: Any) -> str | None:
    """The raw folder the original's default ``<raw>_out`` naming points to, if it follows it."""
    if not isinstance(path, str):
        return None
    stripped = path.rstrip("/\\")
    return stripped[: -len("_out")] if stripped.endswith("_out") and len(stripped) > len("_out") else None


def _alpha_weights(alphas: Any, where: str, notes: list[str]) -> Raw:
    """deep-supervision params from the original's per-head ``alphas`` (lowest resolution first)."""
    if not isinstance(alphas, list | tuple) or not alphas:
        return {}
    full_first = [float(a) for a in reversed(alphas)]
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
        notes.append(f"{where}={list(alphas)}: not a geometric series; weight_factor 0.5 (approximate)")
        return params
    notes.append(f"{where}={list(alphas)} (lowest resolution first) -> weight_factor {params['weight_factor']}, "
                 f"skip_lowest {params['skip_lowest']} (full resolution first, normalised to sum to 1)")
    return params


def _rstrip_zeros(values: list[float]) -> list[float]:
    end = len(values)
    while end > 1 and values[end - 1] == 0:
        end -= 1
    return values[:end]


# -- YAML with the original's python tags -------------------------------------------------------------------
class _LegacyLoader(yaml.SafeLoader):
    """SafeLoader that reads ``!!python/...`` tags as plain data: nothing is imported, looked up or called."""


def _python_tag(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Any:
    kind, _, target = suffix.partition(":")
    if kind == "object/apply" and re.fullmatch(r"numpy(\._?core)?\.multiarray\.scalar", target):
        return _decoded(loader, node, _numpy_scalar)
    if kind == "object/apply" and re.fullmatch(r"numpy(\._?core)?\.multiarray\._reconstruct", target):
        return _decoded(loader, node, _numpy_array)
    if kind == "object/apply" and target == "numpy.dtype":
        return _decoded(loader, node, _numpy_dtype)
    if kind in ("name", "module"):
        return target  # a reference to a Python object: its dotted name, as text
    if kind in SCALAR_TAGS and isinstance(node, yaml.ScalarNode):
        return SCALAR_TAGS[kind](loader, node)
    return _plain(loader, node)


def _plain(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    """A tagged node as the mapping, list or string it is written as (an AttrDict's items as a dict)."""
    if isinstance(node, yaml.MappingNode):
        value = loader.construct_mapping(node, deep=True)
        if isinstance(value.get("dictitems"), dict) and set(value) <= {"args", "kwds", "state", "listitems", "dictitems"}:
            return dict(value["dictitems"])
        return dict(value)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    return loader.construct_scalar(node)


def _decoded(loader: yaml.SafeLoader, node: yaml.Node, decode: Any) -> Any:
    """numpy values rebuilt from their raw bytes and dtype code (no pickling), else the plain structure."""
    value = _plain(loader, node)
    try:
        return decode(value)
    except Exception:  # an unexpected layout stays plain data
        return value


def _numpy_dtype(value: dict[str, Any]) -> str:
    import numpy as np

    dtype = np.dtype(str(value["args"][0]))
    order = (value.get("state") or [None, None])[1]
    return (dtype.newbyteorder(order) if order in ("<", ">") else dtype).str


def _numpy_scalar(value: list[Any]) -> Any:
    import numpy as np

    dtype, data = value[0], value[1]
    return np.frombuffer(data, dtype=np.dtype(dtype), count=1)[0].item()


def _numpy_array(value: dict[str, Any]) -> list[Any]:
    import numpy as np

    _, shape, dtype, fortran, data = value["state"]
    if not isinstance(data, bytes):
        return list(data)  # object arrays keep their items as a list
    array = np.frombuffer(data, dtype=np.dtype(dtype)).reshape(shape, order="F" if fortran else "C")
    return array.tolist()


SCALAR_TAGS = {
    "none": lambda loader, node: None,
    "bool": lambda loader, node: loader.construct_yaml_bool(node),
    "int": lambda loader, node: loader.construct_yaml_int(node),
    "long": lambda loader, node: loader.construct_yaml_int(node),
    "float": lambda loader, node: loader.construct_yaml_float(node),
    "str": lambda loader, node: loader.construct_scalar(node),
    "unicode": lambda loader, node: loader.construct_scalar(node),
    "bytes": lambda loader, node: loader.construct_yaml_binary(node),
}

_LegacyLoader.add_multi_constructor("tag:yaml.org,2002:python/", _python_tag)

"""`biom3d run`: the stages a config asks for (preprocess -> train -> predict -> evaluate) in one pipeline
folder ``<runs_dir>/<name>/``, skipping stages whose outputs are complete, so a re-run after a crash
resumes where it stopped (an interrupted training continues from its last checkpoint). A folder whose data was
preprocessed from other files or settings (a mask corrected in place, another images folder under the same name)
is refused: its finished stages are that data's.

Pipeline folder::

    config.yaml  pipeline.json (stage states)  preprocessed/  run/ (a run folder)  predictions/  eval.csv

With ``cross_validation`` (nnU-Net's way of measuring a method on its training data), one run per fold of
folds.csv replaces ``run/``, and each fold's held-out training images are predicted by the run that never saw
them::

    folds/fold-0/ ... folds/fold-K/ (run folders)  cv/predictions/  cv/eval.csv (the cross-validation Dice)

and the test images by the ensemble of all folds (as `biom3d predict PIPELINE_FOLDER` then does).

A fine-tuning trains in ``run.finetuning/<name>-<timestamp>/`` (``fold-K.finetuning/`` for a fold; where
``Builder.finetune`` puts a new run) and becomes ``run/`` once trained; pipeline.json remembers the run it
started from, so a re-run resumes it.

Under torchrun (or `biom3d run --devices 0,1`) every rank runs the pipeline: rank 0 alone preprocesses, writes
the folder's files and evaluates while the others wait; all ranks train one model with DDP and predict their
share of the test images, then wait for each other, so the evaluation sees every mask.
"""

from __future__ import annotations

import copy
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from biom3d.core.atomic import atomic_write_text, remove_stale_temporaries
from biom3d.core.config import Config, apply_overrides, from_command_line, read_yaml, validate
from biom3d.core.errors import Biom3dError, ConfigError, DataError, InputError, Problem
from biom3d.core.runs import PIPELINE, PIPELINE_RUN, fold_run, fold_runs
from biom3d.core.stages.pipeline_steps import PipelineState, predict_stage, train_stage

log = logging.getLogger("biom3d")
SHARED_FROM_PREPROCESS = ("in_channels", "patch_size", "aug_patch_size", "num_pools", "spacing")
CROSS_VALIDATION = "cv"  # its folder: predictions/ of the held-out images, eval.csv


@dataclass
class PipelineResult:
    folder: Path
    run_dir: Path | None = None  # the trained run; the first fold's under cross-validation
    predictions: Path | None = None
    report: Any = None  # biom3d.core.stages.evaluate.EvalReport
    fold_runs: list[Path] | None = None  # cross-validation: one run per fold, ensembled on the test images
    cv_report: Any = None  # the held-out training images, each predicted by the fold run that never saw it


def run_pipeline(config: str | Path | dict[str, Any], *, overrides: dict[str, Any] | None = None,
                 registry=None, progress: bool = True, folder: str | Path | None = None,
                 checkpoint: str | None = None, finetune: str | Path | None = None,
                 strict_versions: bool = False) -> PipelineResult:
    """Run the config's stages in ``folder`` (default ``<runs_dir>/<name>``; see :func:`pipeline_folder`).
    ``checkpoint`` is the weights the predict stage uses ("best", "last"; None: best when the run has one);
    ``finetune`` a run folder whose weights training starts from; ``strict_versions`` refuses a run (resumed,
    fine-tuned from, predicted with) made with other plugin versions, as on `biom3d train` and `predict`."""
    from biom3d.core import distributed
    from biom3d.core.discovery import get_registry

    registry = registry or get_registry()
    if isinstance(config, str | Path):
        source = Path(config).resolve()
        raw = read_yaml(source)
        base = source.parent
    else:
        raw, base, source = copy.deepcopy(config), Path.cwd(), None
    raw = _absolute_data_paths(apply_overrides(raw, overrides or {}), base)
    try:
        cfg = validate(raw, registry=registry, source=str(source) if source else None)  # every error, up front
    except ConfigError as exc:
        raise from_command_line(exc, overrides or {}) from None
    _require_data(cfg, raw, str(source) if source else None)  # before the pipeline folder is made
    _require_writers(cfg, registry)
    folder = Path(folder).resolve() if folder is not None else Path(cfg.runs_dir).resolve() / cfg.name
    device = distributed.rank_device(cfg.train.device)
    with distributed.session(device, cfg.train.ddp_timeout):
        distributed.run_on_main(lambda: _open_folder(folder, raw, cfg, registry), stage=True)
        return _stages(cfg, raw, folder, registry, progress, checkpoint=checkpoint, finetune=finetune,
                       strict_versions=strict_versions)


def _require_data(cfg: Config, raw: dict[str, Any], source: str | None) -> None:
    """The data the stages will read, there: a typo fails now, not once a folder is made and data preprocessed."""
    problems = [Problem(f"data.{key}", f"{value} does not exist; check the path") for key, value
                in cfg.data.model_dump(exclude={"predictions", "probabilities"}).items() if value and not Path(value).exists()]
    if cfg.cross_validation:
        if "fold" in (raw.get("train") or {}):
            problems.append(Problem("train.fold", "cross-validation trains every fold; leave train.fold (--fold) out, "
                                    "or set cross_validation: false to train the one fold"))
        if "train" in cfg.stages and not (cfg.data.images and cfg.data.masks):
            problems.append(Problem("cross_validation", "scores each fold's held-out training images against "
                                    "their masks: give data.images and data.masks (the raw training data)"))
    if problems:
        raise ConfigError(problems, source=source)


def _require_writers(cfg: Config, registry) -> None:
    """Every image the pipeline will predict has a writer for its format, or the run stops now, not after
    training."""
    from biom3d.core.stages.predict import require_writers

    if "predict" not in cfg.stages:
        return
    inputs = [cfg.data.test_images] + ([cfg.data.images] if cfg.cross_validation and "train" in cfg.stages else [])
    for folder in filter(None, inputs):
        require_writers(folder, registry=registry, reader=cfg.reader.name if cfg.reader else None,
                        writer=cfg.writer.name if cfg.writer else None)


def _open_folder(folder: Path, raw: dict[str, Any], cfg: Config, registry) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    _refuse_other_inputs(folder, cfg, registry)  # before config.yaml, which a --resume reads, is replaced
    remove_stale_temporaries(folder)  # the pipeline folder is the pipeline's own: a kill's leftovers go
    atomic_write_text(folder / "config.yaml", yaml.safe_dump(raw, sort_keys=False))


def _stages(cfg: Config, raw: dict[str, Any], folder: Path, registry, progress: bool, *, checkpoint: str | None,
            finetune: str | Path | None, strict_versions: bool) -> PipelineResult:
    from biom3d.core import distributed

    state = PipelineState(folder / PIPELINE)
    result = PipelineResult(folder)
    prep_dir = distributed.run_on_main(lambda: _preprocess(cfg, raw, folder, state, registry, progress), stage=True)
    state.reload()  # what rank 0 recorded, on every rank
    predict_options = {"checkpoint": checkpoint, "strict_versions": strict_versions, "progress": progress}
    if cfg.cross_validation:
        held_out = _held_out(cfg, prep_dir, registry) if prep_dir is not None and "train" in cfg.stages else {}
        result.fold_runs = _cross_validate(cfg, raw, prep_dir, folder, state, registry, held_out,
                                           finetune=finetune, **predict_options)
        models = result.fold_runs
        result.run_dir = models[0] if models else None
        cv_predictions = folder / CROSS_VALIDATION / "predictions"
        if "eval" in cfg.stages and models and state.is_done(CROSS_VALIDATION):
            result.cv_report = distributed.run_on_main(lambda: _evaluate(
                cfg, cv_predictions, cfg.data.masks, folder / CROSS_VALIDATION / "eval.csv", state,
                f"{CROSS_VALIDATION}.eval", registry), stage=True)
    else:
        if "train" in cfg.stages and prep_dir is not None:
            result.run_dir = train_stage(raw, prep_dir, folder / PIPELINE_RUN, state, "train", registry,
                                    finetune=finetune, strict_versions=strict_versions)
        elif (folder / PIPELINE_RUN / "config.yaml").is_file():
            result.run_dir = folder / PIPELINE_RUN
        models = [result.run_dir] if result.run_dir is not None else []
    if "predict" in cfg.stages and cfg.data.test_images and models:
        out = Path(cfg.data.predictions) if cfg.data.predictions else folder / "predictions"
        result.predictions = predict_stage(cfg, models, cfg.data.test_images, out, state, "predict", registry,
                                           probabilities=cfg.data.probabilities, **predict_options)
    if "eval" in cfg.stages and cfg.data.test_masks and result.predictions is not None:
        result.report = distributed.run_on_main(lambda: _evaluate(
            cfg, result.predictions, cfg.data.test_masks, folder / "eval.csv", state, "eval", registry), stage=True)
    return result


def _cross_validate(cfg: Config, raw: dict[str, Any], prep_dir: Path | None, folder: Path, state, registry,
                    held_out: dict[int, list[str]], *, finetune: str | Path | None, checkpoint: str | None,
                    strict_versions: bool, progress: bool) -> list[Path]:
    """Train (or resume, or find) one run per fold, then predict each fold's held-out training images with its
    own run into cv/predictions/: the runs, in fold order."""
    if "train" not in cfg.stages or prep_dir is None:
        return fold_runs(folder)
    trained = []
    for i, fold in enumerate(sorted(held_out)):
        log.info("train: fold %d (%d of %d)", fold, i + 1, len(held_out))
        fold_raw = apply_overrides(copy.deepcopy(raw), {"train.fold": fold})
        trained.append(train_stage(fold_raw, prep_dir, fold_run(folder, fold), state, f"train.fold-{fold}", registry,
                                finetune=finetune, strict_versions=strict_versions))
    state.done("train", runs=[str(r) for r in trained])
    if "predict" in cfg.stages:
        for fold, run_dir in zip(sorted(held_out), trained, strict=True):
            predict_stage(cfg, [run_dir], cfg.data.images, folder / CROSS_VALIDATION / "predictions", state,
                     f"{CROSS_VALIDATION}.fold-{fold}", registry, keys=held_out[fold], checkpoint=checkpoint,
                     strict_versions=strict_versions, progress=progress)
        state.done(CROSS_VALIDATION, folds=len(trained))
    return trained


def _held_out(cfg: Config, prep_dir: Path, registry) -> dict[int, list[str]]:
    """Each fold's validation images as case keys of data.images, checked before any training: a fold whose
    images are not raw training images (one image, split in two by the preprocessor) cannot be scored."""
    from biom3d.core.folds import fold_table
    from biom3d.core.scan import scan_input

    path = Path(cfg.data.folds) if cfg.data.folds else prep_dir / "folds.csv"
    table = fold_table(path)
    _, items = scan_input(Path(cfg.data.images), registry, cfg.reader.name if cfg.reader else None)
    raw_keys = {i.key for i in items}
    held_out: dict[int, list[str]] = {}
    for name, fold in table:
        held_out.setdefault(fold, []).append(name.removesuffix(".npy"))
    unknown = sorted(k for keys in held_out.values() for k in keys if k not in raw_keys)
    if len(held_out) < 2 or unknown:
        why = (f"{path} has {len(held_out)} fold" if len(held_out) < 2 else
               f"{path} names cases that are not images of data.images {cfg.data.images}: {', '.join(unknown[:3])}")
        raise DataError(f"cross-validation needs two folds or more of whole training images ({why}); a single "
                        "image is split in two by the preprocessor. Give more training images, or set "
                        "cross_validation: false")
    return held_out


def _evaluate(cfg: Config, predictions: Path, truths: str, csv_path: Path, state, stage: str, registry):
    from biom3d.core.stages.evaluate import evaluate

    report = evaluate(predictions, truths, num_classes=cfg.num_classes, csv_path=csv_path,
                      overwrite=True, reader=cfg.reader.name if cfg.reader else None, registry=registry)  # its own
    state.done(stage, mean_dice=report.mean("dice"))
    return report


def _preprocess(cfg: Config, raw, folder: Path, state, registry, progress: bool) -> Path | None:
    if cfg.data.preprocessed:
        return Path(cfg.data.preprocessed)
    out = folder / "preprocessed"
    if state.is_done("preprocess") and (out / "config.yaml").is_file():
        log.info("preprocess: done already (%s)", out)
        return out
    if "preprocess" not in cfg.stages:
        return out if (out / "config.yaml").is_file() else None
    if not (cfg.data.images and cfg.data.masks):
        raise ConfigError([Problem("data.images", "the preprocess stage needs data.images and data.masks")])
    from biom3d.core.stages.preprocess import preprocess_dataset

    log.info("preprocess: %s + %s -> %s", cfg.data.images, cfg.data.masks, out)
    preprocess_dataset(Path(cfg.data.images), Path(cfg.data.masks), out, num_classes=cfg.num_classes,
                       multilabel=cfg.multilabel, workers=cfg.train.workers, stack=cfg.stack,
                       preprocessor=cfg.preprocessor.name,
                       params=cfg.preprocessor.params, name=cfg.name, seed=cfg.train.seed or 0, progress=progress,
                       max_dim=cfg.autoconfig.max_dim, max_pool=cfg.autoconfig.max_pool,
                       max_batch=cfg.autoconfig.max_batch, reader=cfg.reader.model_dump() if cfg.reader else None,
                       registry=registry)
    state.done("preprocess", folder=str(out), inputs=_inputs(cfg))
    return out


PREPROCESS_KEYS = ("num_classes", "multilabel", "stack", "preprocessor", "reader", "autoconfig")


def _inputs(cfg: Config) -> dict[str, Any]:
    """What the pipeline's preprocessed data, hence its model, came from: the settings preprocessing reads and
    each raw file's name, size and modification time (a mask corrected in place keeps its size)."""
    return {**cfg.model_dump(mode="json", include=set(PREPROCESS_KEYS)),
            "data.images": _listing(Path(cfg.data.images)), "data.masks": _listing(Path(cfg.data.masks))}


def _listing(folder: Path) -> dict[str, Any]:
    files = sorted(p for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else [folder]
    return {"folder": str(folder), "files": {str(p.relative_to(folder)) if p != folder else p.name:
                                             [p.stat().st_size, p.stat().st_mtime_ns] for p in files}}


def _refuse_other_inputs(folder: Path, cfg: Config, registry) -> None:
    """A pipeline folder whose data was preprocessed from other files or settings is refused: skipping its
    finished stages would predict with a model of the other data, and re-running them would replace them."""
    recorded = PipelineState(folder / PIPELINE).data.get("preprocess", {}).get("inputs")
    if not recorded or cfg.data.preprocessed or not (cfg.data.images and cfg.data.masks):
        return  # made before inputs were recorded, or preprocessed elsewhere (train compares that folder)
    changed = _differences(_with_new_defaults(recorded, registry), _inputs(cfg))
    if changed:
        raise InputError(f"{folder} was made from other data or settings than these ({'; '.join(changed)}): its "
                         "preprocessed data, model and predictions are theirs. Give another --name to start a new "
                         f"pipeline beside it, set the recorded values back (--set KEY=VALUE) to continue it, or "
                         f"remove {folder} to start this one over")


def _with_new_defaults(recorded: dict[str, Any], registry) -> dict[str, Any]:
    """``recorded`` with the settings added since it was written at their defaults: a parameter is added with
    the behaviour it had before as its default, so a folder made before it is not refused for lacking it (a
    component's own defaults, never a stack's, which may choose otherwise)."""
    from biom3d.core.config import AutoConfigSettings
    from biom3d.core.specs import SLOTS, param_defaults

    out = dict(recorded)
    for key, value in recorded.items():
        if key == "autoconfig" and isinstance(value, dict):
            out[key] = {**AutoConfigSettings().model_dump(mode="json"), **value}
        elif key in SLOTS and isinstance(value, dict) and isinstance(value.get("params"), dict):
            try:
                params_model = registry.resolve(SLOTS[key][0], value["name"]).spec.params
            except (Biom3dError, ValueError):  # a component gone or broken: as recorded
                continue
            out[key] = {**value, "params": {**param_defaults(params_model), **value["params"]}}
    return out


def _differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    changed = []
    for key in sorted(set(old) | set(new)):
        before, after = old.get(key), new.get(key)
        if key.startswith("data.") and isinstance(before, dict) and isinstance(after, dict):
            if before.get("folder") != after.get("folder"):
                changed.append(f"{key}: {before.get('folder')} -> {after.get('folder')}")
                continue
            files_before, files_after = before.get("files", {}), after.get("files", {})
            for what, names in (("added", sorted(set(files_after) - set(files_before))),
                                ("removed", sorted(set(files_before) - set(files_after))),
                                ("changed", sorted(n for n in set(files_before) & set(files_after)
                                                   if files_before[n] != files_after[n]))):
                if names:
                    shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
                    changed.append(f"{key}: {what} {shown}")
        elif _same_component(before, after):  # name the parameters that differ, settable with --set
            params = (before["params"], after["params"])
            changed += [f"{key}.params.{p}: {json.dumps(params[0].get(p))} -> {json.dumps(params[1].get(p))}"
                        for p in sorted(set(params[0]) | set(params[1])) if params[0].get(p) != params[1].get(p)]
        elif before != after:
            changed.append(f"{key}: {json.dumps(before)} -> {json.dumps(after)}")
    return changed


def _same_component(before: Any, after: Any) -> bool:
    return (isinstance(before, dict) and isinstance(after, dict) and before.get("name") == after.get("name")
            and isinstance(before.get("params"), dict) and isinstance(after.get("params"), dict))


def _absolute_data_paths(raw: dict[str, Any], base: Path) -> dict[str, Any]:
    data = raw.get("data")
    if isinstance(data, dict):
        for key, value in data.items():
            if isinstance(value, str) and not Path(value).expanduser().is_absolute():
                data[key] = str((base / value).resolve())
    return raw


def pipeline_folder(path: str | Path) -> Path:
    """The pipeline folder ``path`` names (itself, or the one its ``run/`` or fold run is in), for `biom3d run
    --resume`; a training run folder of `biom3d train` is refused with the command that continues it."""
    path = Path(path).resolve()
    if (path / "plugins.json").is_file():
        for pipeline in (path.parent, path.parent.parent):  # run/, folds/fold-K/
            if (pipeline / "config.yaml").is_file() and path in (pipeline / PIPELINE_RUN, *fold_runs(pipeline)):
                path = pipeline
                break
    if (path / "plugins.json").is_file():
        raise InputError(f"{path} is a training run folder, not a `biom3d run` pipeline folder; continue it with "
                         f"`biom3d train --resume {path}`")
    if not (path / "config.yaml").is_file():
        raise InputError(f"{path} is not a `biom3d run` pipeline folder (no config.yaml); give the folder "
                         "`biom3d run` created, <runs_dir>/<name>")
    return path

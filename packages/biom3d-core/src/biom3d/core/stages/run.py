"""`biom3d run`: the stages a config asks for (preprocess -> train -> predict -> evaluate) in one pipeline
folder ``<runs_dir>/<name>/``, skipping stages whose outputs are complete, so a re-run after a crash
resumes where it stopped (an interrupted training continues from its last checkpoint). A folder whose data was
preprocessed from other files or settings (a mask corrected in place, another images folder under the same name)
is refused: its finished stages are that data's.

Pipeline folder::

    config.yaml  pipeline.json (stage states)  preprocessed/  run/ (a run folder)  predictions/  eval.csv

A fine-tuning trains in ``run.finetuning/<name>-<timestamp>/`` (where ``Builder.finetune`` puts a new run) and
becomes ``run/`` once trained; pipeline.json remembers the run it started from, so a re-run resumes it.

Under torchrun (or `biom3d run --devices 0,1`) every rank runs the pipeline: rank 0 alone preprocesses, writes
the folder's files and evaluates while the others wait; all ranks train one model with DDP and predict their
share of the test images, then wait for each other, so the evaluation sees every mask.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from biom3d.core.atomic import atomic_write_text, remove_stale_temporaries
from biom3d.core.config import Config, apply_overrides, read_yaml, validate
from biom3d.core.errors import ConfigError, InputError, Problem

log = logging.getLogger("biom3d")
SHARED_FROM_PREPROCESS = ("in_channels", "patch_size", "aug_patch_size", "num_pools", "spacing")
PIPELINE, FINETUNING = "pipeline.json", "run.finetuning"


@dataclass
class PipelineResult:
    folder: Path
    run_dir: Path | None = None
    predictions: Path | None = None
    report: Any = None  # biom3d.core.stages.evaluate.EvalReport


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
    cfg = validate(raw, registry=registry, source=str(source) if source else None)  # every error, up front
    _require_data(cfg, str(source) if source else None)  # before the pipeline folder is made
    folder = Path(folder).resolve() if folder is not None else Path(cfg.runs_dir).resolve() / cfg.name
    device = distributed.rank_device(cfg.train.device)
    with distributed.session(device, cfg.train.ddp_timeout):
        distributed.run_on_main(lambda: _open_folder(folder, raw, cfg), stage=True)
        return _stages(cfg, raw, folder, registry, progress, checkpoint=checkpoint, finetune=finetune,
                       strict_versions=strict_versions)


def _require_data(cfg: Config, source: str | None) -> None:
    """The data the stages will read, there: a typo fails now, not once a folder is made and data preprocessed."""
    problems = [Problem(f"data.{key}", f"{value} does not exist; check the path") for key, value
                in cfg.data.model_dump(exclude={"predictions"}).items() if value and not Path(value).exists()]
    if problems:
        raise ConfigError(problems, source=source)


def _open_folder(folder: Path, raw: dict[str, Any], cfg: Config) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    _refuse_other_inputs(folder, cfg)  # before config.yaml, which a --resume reads, is replaced
    remove_stale_temporaries(folder)  # the pipeline folder is the pipeline's own: a kill's leftovers go
    atomic_write_text(folder / "config.yaml", yaml.safe_dump(raw, sort_keys=False))


def _stages(cfg: Config, raw: dict[str, Any], folder: Path, registry, progress: bool, *, checkpoint: str | None,
            finetune: str | Path | None, strict_versions: bool) -> PipelineResult:
    from biom3d.core import distributed

    state = _State(folder / PIPELINE)
    result = PipelineResult(folder)
    prep_dir = distributed.run_on_main(lambda: _preprocess(cfg, raw, folder, state, registry, progress), stage=True)
    state.reload()  # what rank 0 recorded, on every rank
    if "train" in cfg.stages and prep_dir is not None:
        result.run_dir = _train(raw, prep_dir, folder, state, registry, finetune=finetune,
                                strict_versions=strict_versions)
    elif (folder / "run" / "config.yaml").is_file():
        result.run_dir = folder / "run"
    if "predict" in cfg.stages and cfg.data.test_images and result.run_dir is not None:
        result.predictions = _predict(cfg, result.run_dir, folder, state, registry, progress,
                                      checkpoint=checkpoint, strict_versions=strict_versions)
    if "eval" in cfg.stages and cfg.data.test_masks and result.predictions is not None:
        result.report = distributed.run_on_main(lambda: _evaluate(cfg, result.predictions, folder, state, registry),
                                                stage=True)
    return result


def _evaluate(cfg: Config, predictions: Path, folder: Path, state, registry):
    from biom3d.core.stages.evaluate import evaluate

    report = evaluate(predictions, cfg.data.test_masks, num_classes=cfg.num_classes, csv_path=folder / "eval.csv",
                      overwrite=True, reader=cfg.reader.name if cfg.reader else None, registry=registry)  # its own
    state.done("eval", mean_dice=report.mean("dice"))
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


def _refuse_other_inputs(folder: Path, cfg: Config) -> None:
    """A pipeline folder whose data was preprocessed from other files or settings is refused: skipping its
    finished stages would predict with a model of the other data, and re-running them would replace them."""
    recorded = _State(folder / PIPELINE).data.get("preprocess", {}).get("inputs")
    if not recorded or cfg.data.preprocessed or not (cfg.data.images and cfg.data.masks):
        return  # made before inputs were recorded, or preprocessed elsewhere (train compares that folder)
    changed = _differences(recorded, _inputs(cfg))
    if changed:
        raise InputError(f"{folder} was made from other data or settings than these ({'; '.join(changed)}): its "
                         "preprocessed data, model and predictions are theirs. Give another --name to start a new "
                         f"pipeline beside it, or remove {folder} to start this one over")


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
        elif before != after:
            changed.append(f"{key}: {json.dumps(before)} -> {json.dumps(after)}")
    return changed


def _train(raw: dict[str, Any], prep_dir: Path, folder: Path, state, registry, *, finetune: str | Path | None,
           strict_versions: bool) -> Path:
    """Train ``run/``, or resume it: an interrupted run continues, a finished one is extended when more
    epochs are asked for; train settings the config (or the command line) changed since apply on resume."""
    from biom3d.core import distributed
    from biom3d.core.builder import Builder
    from biom3d.core.checkpoints import BEST, has_checkpoint

    run_dir = folder / "run"
    source = finetune or state.data.get("train", {}).get("finetune")
    staged = _staged_finetuning(folder)
    if staged is not None and not has_checkpoint(run_dir / "checkpoints"):
        log.info("train: resuming the interrupted fine-tuning %s", staged)
        Builder.resume(staged, registry=registry, overrides=_changed_train(raw, staged),
                       strict_versions=strict_versions)
        distributed.run_on_main(lambda: _install(staged, run_dir))
    elif has_checkpoint(run_dir / "checkpoints"):
        _refuse_other_preprocessed(run_dir, prep_dir)
        changed = _changed_train(raw, run_dir)
        trained = read_yaml(run_dir / "config.yaml").get("train", {}).get("epochs", 0)
        extend = changed.get("train.epochs", 0) > trained
        if state.is_done("train") and (run_dir / "checkpoints" / BEST).is_file() and not extend:
            log.info("train: done already (%s)", run_dir)
            ignored = sorted(changed) + (["--finetune"] if finetune else [])
            if ignored:
                log.warning("train: the trained run keeps its own %s (more epochs extend it; another --name "
                            "trains a new run)", ", ".join(ignored))
            return run_dir
        if extend:
            log.info("train: extending the run %s to %d epochs", run_dir, changed["train.epochs"])
        else:
            log.info("train: resuming the interrupted run %s", run_dir)
        Builder.resume(run_dir, registry=registry, overrides=changed, strict_versions=strict_versions)
    elif source is not None:
        state.note("train", finetune=str(Path(source).resolve()))  # a re-run after a kill resumes it
        # a kill before its first checkpoint: no run
        distributed.run_on_main(lambda: shutil.rmtree(folder / FINETUNING, ignore_errors=True))
        result = Builder.finetune(source, merge_with_preprocessed(raw, prep_dir), registry=registry,
                                  runs_dir=folder / FINETUNING, strict_versions=strict_versions)
        distributed.run_on_main(lambda: _install(result.run_dir, run_dir))
    else:
        merged = merge_with_preprocessed(raw, prep_dir)
        Builder(merged, registry=registry).train(run_dir=run_dir)
    info = {"finetune": str(source)} if source is not None else {}
    state.done("train", run_dir=str(run_dir), **info)
    return run_dir


def _refuse_other_preprocessed(run_dir: Path, prep_dir: Path) -> None:
    """data.preprocessed pointed elsewhere since run/ trained: its model is another data's."""
    ran = (read_yaml(run_dir / "config.yaml").get("data") or {}).get("preprocessed")
    if ran and Path(ran).resolve() != prep_dir.resolve():
        raise InputError(f"{run_dir} was trained on {ran}, not on data.preprocessed {prep_dir}: give another --name "
                         f"to train on it in a new pipeline, or remove {run_dir.parent} to start this one over")


def _changed_train(raw: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """The pipeline config's train settings that differ from the run's, as overrides for ``Builder.resume``."""
    ran = read_yaml(run_dir / "config.yaml").get("train", {})
    wanted = raw.get("train") or {}
    return {f"train.{k}": v for k, v in wanted.items() if ran.get(k) != v}


def _staged_finetuning(folder: Path) -> Path | None:
    """The fine-tuning a kill interrupted after its first checkpoint, if any."""
    from biom3d.core.checkpoints import has_checkpoint

    found = sorted(p for p in (folder / FINETUNING).glob("*") if has_checkpoint(p / "checkpoints"))
    return found[-1] if found else None


def _install(staged: Path, run_dir: Path) -> None:
    """Make a trained fine-tuning the pipeline's ``run/`` (whose own training, if any, never checkpointed)."""
    if run_dir.exists():
        shutil.rmtree(run_dir)
    os.replace(staged, run_dir)
    shutil.rmtree(staged.parent, ignore_errors=True)


def _predict(cfg: Config, run_dir: Path, folder: Path, state, registry, progress: bool, *,
             checkpoint: str | None, strict_versions: bool) -> Path:
    """Predict the test images, skipping those done already; all of them again when the weights differ from
    those of the last predictions (another --checkpoint, a run trained further)."""
    from biom3d.core import distributed
    from biom3d.core.runs import require_checkpoint
    from biom3d.core.stages.predict import predict

    out = Path(cfg.data.predictions) if cfg.data.predictions else folder / "predictions"
    chosen = require_checkpoint(run_dir, checkpoint)
    stat = chosen.stat()
    weights = {"file": chosen.name, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    previous = state.data.get("predict", {}).get("checkpoint")
    again = previous is not None and previous != weights
    if again:
        log.info("predict: the weights changed since the last predictions (%s, now %s): predicting all again",
                 previous["file"], chosen.name)
    elif previous is None:
        state.note("predict", checkpoint=weights)  # a kill now: the re-run keeps what these weights wrote
    written = predict([run_dir], cfg.data.test_images, out, device=cfg.train.device, checkpoint=checkpoint,
                      overwrite=again, skip_existing=True, strict_versions=strict_versions, registry=registry,
                      progress=progress)  # under torchrun, this rank's share
    distributed.wait_for_all()
    log.info("predict: %d new mask(s) in %s", sum(distributed.gather(len(written))), out)
    state.done("predict", folder=str(out), checkpoint=weights)
    return out


def merge_with_preprocessed(raw: dict[str, Any], prep_dir: Path) -> dict[str, Any]:
    """The user's config completed by what preprocessing found (patch, pooling, spacing...); the user's
    explicit values win, envelopes naming the same component merge their params."""
    written = read_yaml(prep_dir / "config.yaml")
    merged = _deep_merge(written, raw)
    merged.setdefault("data", {})["preprocessed"] = str(prep_dir.resolve())
    return merged


def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        old = out.get(key)
        if isinstance(value, str) and isinstance(old, dict) and "name" in old:
            value = {"name": value}  # shorthand envelope
        if isinstance(value, dict) and isinstance(old, dict):
            if "name" in value and "name" in old and _short(value["name"]) != _short(old["name"]):
                out[key] = value  # another component: its params do not carry over
            else:
                out[key] = _deep_merge(old, value)
        else:
            out[key] = value
    return out


def _short(name: str) -> str:
    return name.rsplit("/", 1)[-1]


def _absolute_data_paths(raw: dict[str, Any], base: Path) -> dict[str, Any]:
    data = raw.get("data")
    if isinstance(data, dict):
        for key, value in data.items():
            if isinstance(value, str) and not Path(value).expanduser().is_absolute():
                data[key] = str((base / value).resolve())
    return raw


class _State:
    """pipeline.json: which stages finished, written atomically after each. Every rank keeps the same record
    (each updates its own copy at the same points); rank 0 alone writes it."""

    def __init__(self, path: Path):
        self.path = path
        self.reload()

    def reload(self) -> None:
        self.data: dict[str, Any] = json.loads(self.path.read_text(encoding="utf-8")) if self.path.is_file() else {}

    def is_done(self, stage: str) -> bool:
        return bool(self.data.get(stage, {}).get("done"))

    def done(self, stage: str, **info: Any) -> None:
        self.data[stage] = {"done": True, **info}
        self._write()

    def note(self, stage: str, **info: Any) -> None:
        """Record what a stage started with, before it is done."""
        self.data[stage] = {**self.data.get(stage, {}), "done": False, **info}
        self._write()

    def _write(self) -> None:
        from biom3d.core.distributed import is_main

        if is_main():
            atomic_write_text(self.path, json.dumps(self.data, indent=2))


def pipeline_folder(path: str | Path) -> Path:
    """The pipeline folder ``path`` names (itself, or the one its ``run/`` is in), for `biom3d run --resume`;
    a training run folder of `biom3d train` is refused with the command that continues it."""
    path = Path(path).resolve()
    if path.name == "run" and (path / "plugins.json").is_file() and (path.parent / "config.yaml").is_file():
        path = path.parent
    if (path / "plugins.json").is_file():
        raise InputError(f"{path} is a training run folder, not a `biom3d run` pipeline folder; continue it with "
                         f"`biom3d train --resume {path}`")
    if not (path / "config.yaml").is_file():
        raise InputError(f"{path} is not a `biom3d run` pipeline folder (no config.yaml); give the folder "
                         "`biom3d run` created, <runs_dir>/<name>")
    return path

"""`biom3d run`: the stages a config asks for (preprocess -> train -> predict -> evaluate) in one pipeline
folder ``<runs_dir>/<name>/``, skipping stages whose outputs are complete, so a re-run after a crash
resumes where it stopped (an interrupted training continues from its last checkpoint).

Pipeline folder::

    config.yaml  pipeline.json (stage states)  preprocessed/  run/ (a run folder)  predictions/  eval.csv
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
from biom3d.core.config import Config, apply_overrides, read_yaml, validate
from biom3d.core.errors import ConfigError, Problem

log = logging.getLogger("biom3d")
SHARED_FROM_PREPROCESS = ("in_channels", "patch_size", "aug_patch_size", "num_pools", "spacing")


@dataclass
class PipelineResult:
    folder: Path
    run_dir: Path | None = None
    predictions: Path | None = None
    report: Any = None  # biom3d.core.stages.evaluate.EvalReport


def run_pipeline(config: str | Path | dict[str, Any], *, overrides: dict[str, Any] | None = None,
                 registry=None, progress: bool = True) -> PipelineResult:
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
    folder = Path(cfg.runs_dir).resolve() / cfg.name
    folder.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(folder)  # the pipeline folder is the pipeline's own: a kill's leftovers go
    atomic_write_text(folder / "config.yaml", yaml.safe_dump(raw, sort_keys=False))
    state = _State(folder / "pipeline.json")
    result = PipelineResult(folder)

    prep_dir = _preprocess(cfg, raw, folder, state, registry, progress)
    if "train" in cfg.stages and prep_dir is not None:
        result.run_dir = _train(raw, prep_dir, folder, state, registry)
    elif (folder / "run" / "config.yaml").is_file():
        result.run_dir = folder / "run"
    if "predict" in cfg.stages and cfg.data.test_images and result.run_dir is not None:
        result.predictions = _predict(cfg, result.run_dir, folder, state, registry, progress)
    if "eval" in cfg.stages and cfg.data.test_masks and result.predictions is not None:
        from biom3d.core.stages.evaluate import evaluate

        result.report = evaluate(result.predictions, cfg.data.test_masks, num_classes=cfg.num_classes,
                                 csv_path=folder / "eval.csv", overwrite=True,
                                 reader=cfg.reader.name if cfg.reader else None, registry=registry)  # its own
        state.done("eval", mean_dice=result.report.mean("dice"))
    return result


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
    state.done("preprocess", folder=str(out))
    return out


def _train(raw: dict[str, Any], prep_dir: Path, folder: Path, state, registry) -> Path:
    from biom3d.core.builder import Builder
    from biom3d.core.checkpoints import BEST, LAST, PREVIOUS

    run_dir = folder / "run"
    if state.is_done("train") and (run_dir / "checkpoints" / BEST).is_file():
        log.info("train: done already (%s)", run_dir)
        return run_dir
    checkpoints = run_dir / "checkpoints"
    if any((checkpoints / n).is_file() for n in (LAST, PREVIOUS, BEST)):
        log.info("train: resuming the interrupted run %s", run_dir)
        Builder.resume(run_dir, registry=registry)
    else:
        merged = merge_with_preprocessed(raw, prep_dir)
        Builder(merged, registry=registry).train(run_dir=run_dir)
    state.done("train", run_dir=str(run_dir))
    return run_dir


def _predict(cfg: Config, run_dir: Path, folder: Path, state, registry, progress: bool) -> Path:
    from biom3d.core.stages.predict import predict

    out = Path(cfg.data.predictions) if cfg.data.predictions else folder / "predictions"
    written = predict([run_dir], cfg.data.test_images, out, device=cfg.train.device, skip_existing=True,
                      registry=registry, progress=progress)
    log.info("predict: %d new mask(s) in %s", len(written), out)
    state.done("predict", folder=str(out))
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
    """pipeline.json: which stages finished, written atomically after each."""

    def __init__(self, path: Path):
        self.path = path
        self.data: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {}

    def is_done(self, stage: str) -> bool:
        return bool(self.data.get(stage, {}).get("done"))

    def done(self, stage: str, **info: Any) -> None:
        self.data[stage] = {"done": True, **info}
        atomic_write_text(self.path, json.dumps(self.data, indent=2))

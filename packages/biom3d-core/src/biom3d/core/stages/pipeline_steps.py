"""The resumable steps of `biom3d run` (:mod:`biom3d.core.stages.run`): train a run (or resume, extend or
fine-tune it), predict with one run or several, and pipeline.json, the record that lets a re-run skip what is
done."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from biom3d.core.atomic import atomic_write_text
from biom3d.core.config import Config, read_yaml
from biom3d.core.errors import InputError

log = logging.getLogger("biom3d")


def train_stage(raw: dict[str, Any], prep_dir: Path, run_dir: Path, state, stage: str, registry, *,
           finetune: str | Path | None, strict_versions: bool) -> Path:
    """Train ``run_dir``, or resume it: an interrupted run continues, a finished one is extended when more
    epochs are asked for; train settings the config (or the command line) changed since apply on resume.
    ``stage`` is its record in pipeline.json."""
    from biom3d.core import distributed
    from biom3d.core.builder import Builder
    from biom3d.core.checkpoints import BEST, has_checkpoint

    staging = run_dir.with_name(run_dir.name + ".finetuning")
    source = finetune or state.data.get(stage, {}).get("finetune")
    staged = _staged_finetuning(staging)
    if staged is not None and not has_checkpoint(run_dir / "checkpoints"):
        log.info("train: resuming the interrupted fine-tuning %s", staged)
        Builder.resume(staged, registry=registry, overrides={**_changed_train(raw, staged), **_moved(staged, prep_dir)},
                       strict_versions=strict_versions)
        distributed.run_on_main(lambda: _install(staged, run_dir))
    elif has_checkpoint(run_dir / "checkpoints"):
        moved = _moved(run_dir, prep_dir)
        changed = _changed_train(raw, run_dir)
        trained = read_yaml(run_dir / "config.yaml").get("train", {}).get("epochs", 0)
        extend = changed.get("train.epochs", 0) > trained
        if state.is_done(stage) and (run_dir / "checkpoints" / BEST).is_file() and not extend:
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
        state.note(stage)  # not done until it is: a failed extension has rewritten the run's epochs already
        Builder.resume(run_dir, registry=registry, overrides={**changed, **moved}, strict_versions=strict_versions)
    elif source is not None:
        state.note(stage, finetune=str(Path(source).resolve()))  # a re-run after a kill resumes it
        # a kill before its first checkpoint: no run
        distributed.run_on_main(lambda: shutil.rmtree(staging, ignore_errors=True))
        result = Builder.finetune(source, merge_with_preprocessed(raw, prep_dir), registry=registry,
                                  runs_dir=staging, strict_versions=strict_versions)
        distributed.run_on_main(lambda: _install(result.run_dir, run_dir))
    else:
        merged = merge_with_preprocessed(raw, prep_dir)
        Builder(merged, registry=registry).train(run_dir=run_dir)
    info = {"finetune": str(source)} if source is not None else {}
    state.done(stage, run_dir=str(run_dir), **info)
    return run_dir


def _moved(run_dir: Path, prep_dir: Path) -> dict[str, str]:
    """The override that points a run trained on another place of the same data at ``prep_dir`` (a pipeline
    folder moved or copied whole: the run names the old place); a run of other data is refused, since its model
    is another data's (data.preprocessed pointed elsewhere since it trained)."""
    from biom3d.core.relocation import data_differences, recorded_data
    from biom3d.core.runs import PIPELINE

    data = recorded_data(run_dir)
    ran = data.get("preprocessed")
    if not ran or Path(ran).resolve() == prep_dir.resolve():
        return {}
    preprocessor = read_yaml(run_dir / "config.yaml").get("preprocessor") or {}
    folds = Path(data["folds"]) if data.get("folds") else None
    differences = data_differences(run_dir, prep_dir, preprocessor if isinstance(preprocessor, dict) else {}, folds)
    if differences:
        pipeline = next((p for p in run_dir.parents if (p / PIPELINE).is_file()), run_dir.parent)
        raise InputError(f"{run_dir} was trained on {ran}, not on data.preprocessed {prep_dir} "
                         f"({'; '.join(differences)}): give another --name to train on it in a new pipeline, or "
                         f"remove {pipeline} to start this one over")
    log.info("train: %s was trained on %s, and %s holds the same data (the pipeline folder moved or was copied): "
             "continuing on it", run_dir, ran, prep_dir)
    return {"data.preprocessed": str(prep_dir.resolve())}


def _changed_train(raw: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """The pipeline config's train settings that differ from the run's, as overrides for ``Builder.resume``."""
    ran = read_yaml(run_dir / "config.yaml").get("train", {})
    wanted = raw.get("train") or {}
    return {f"train.{k}": v for k, v in wanted.items() if ran.get(k) != v}


def _staged_finetuning(staging: Path) -> Path | None:
    """The fine-tuning a kill interrupted after its first checkpoint, if any."""
    from biom3d.core.checkpoints import has_checkpoint

    found = sorted(p for p in staging.glob("*") if has_checkpoint(p / "checkpoints"))
    return found[-1] if found else None


def _install(staged: Path, run_dir: Path) -> None:
    """Make a trained fine-tuning the pipeline's run (whose own training, if any, never checkpointed)."""
    if run_dir.exists():
        shutil.rmtree(run_dir)
    os.replace(staged, run_dir)
    shutil.rmtree(staged.parent, ignore_errors=True)


def predict_stage(cfg: Config, run_dirs: list[Path], inputs: str, out: Path, state, stage: str, registry, *,
             progress: bool, checkpoint: str | None, strict_versions: bool, keys: list[str] | None = None,
             probabilities: str | None = None) -> Path:
    """Predict ``inputs`` (those of ``keys``) with ``run_dirs`` (several: their ensemble) into ``out``, skipping
    images done already; all of them again when the weights differ from those of the last predictions (another
    --checkpoint, a run trained further). ``stage`` is its record in pipeline.json; ``probabilities`` a folder
    for the probabilities too."""
    from biom3d.core import distributed
    from biom3d.core.runs import require_checkpoint
    from biom3d.core.stages.predict import predict

    chosen = [require_checkpoint(r, checkpoint) for r in run_dirs]
    stamps = [{"file": c.name, "size": c.stat().st_size, "mtime_ns": c.stat().st_mtime_ns} for c in chosen]
    weights: Any = stamps[0] if len(stamps) == 1 else stamps  # one run: as recorded before ensembles were
    previous = state.data.get(stage, {}).get("checkpoint")
    again = previous is not None and previous != weights
    if again:
        before = ", ".join(str(w.get("file")) for w in (previous if isinstance(previous, list) else [previous]))
        log.info("predict: the weights changed since the last predictions (%s, now %s): predicting all again (%s)",
                 before, ", ".join(c.name for c in chosen), out)
    elif previous is None:
        state.note(stage, checkpoint=weights)  # a kill now: the re-run keeps what these weights wrote
    written = predict(run_dirs, inputs, out, device=cfg.train.device, checkpoint=checkpoint, overwrite=again,
                      skip_existing=True, strict_versions=strict_versions, registry=registry, progress=progress,
                      keys=keys, probabilities=probabilities)  # under torchrun, this rank's share
    distributed.wait_for_all()
    log.info("predict: %d new mask(s) in %s", sum(distributed.gather(len(written))), out)
    state.done(stage, folder=str(out), checkpoint=weights)
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


class PipelineState:
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

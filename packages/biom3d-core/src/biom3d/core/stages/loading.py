"""Trained models as `biom3d predict` loads them: a run folder (its weights, components and fingerprint), an
export (:mod:`biom3d.core.exported`) or a `biom3d run` pipeline folder (its run, or its fold runs); each becomes
a :class:`LoadedRun`, and an ensemble of them is checked before it predicts."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from biom3d.core.config import RESET
from biom3d.core.errors import InputError, RunError

log = logging.getLogger("biom3d")


@dataclass
class LoadedRun:
    """One trained model ready to predict: its network, preprocessor, predictor, fingerprint, post-processing,
    and the run context and reader/writer choices they were built with."""

    run_dir: Path  # the run folder, or the export file
    checkpoint: Path  # the file its weights come from
    builder: Any  # the run's Builder; None for an export
    model: Any
    preprocessor: Any
    predictor: Any
    fingerprint: dict[str, Any]
    context: Any  # RunContext
    postprocessors: list[Any]
    reader: Any = None  # the config's `reader:` Envelope, if any
    writer: Any = None
    epoch: int | None = None  # of the checkpoint, 1-based, when it says
    postprocessing: tuple[str, ...] = ()  # what ``postprocessors`` are, as "qid {params}", to compare runs


def model_paths(paths: Sequence[str | Path]) -> list[Path]:
    """Each path as given, a `biom3d run` pipeline folder as its trained run (its fold runs, cross-validated)."""
    from biom3d.core.runs import pipeline_runs

    models = []
    for path in paths:
        found = pipeline_runs(path) or [Path(path)]
        if len(found) > 1:
            log.info("%s is a cross-validated `biom3d run` pipeline folder: ensembling its %d fold runs", path,
                     len(found))
        models += found
    return models


def load_model(path: Path, *, registry, tta: bool | None = None, overlap: float | None = None,
               fast: bool | None = None, device: str = "auto", checkpoint: str | None = None,
               strict_versions: bool = False, backend: str = "torch") -> LoadedRun:
    """A run folder (:func:`load_run`) or an export (:func:`load_export`), by what ``path`` is."""
    from biom3d.core.exported import export_format

    if export_format(path) is None:
        return load_run(path, registry=registry, tta=tta, overlap=overlap, fast=fast, device=device,
                        checkpoint=checkpoint, strict_versions=strict_versions, backend=backend)
    if checkpoint is not None:
        raise InputError(f"--checkpoint chooses a run folder's weights; {path} is an export, which holds one set "
                         "(export the run again with --checkpoint to change them)")
    return load_export(path, registry=registry, tta=tta, overlap=overlap, fast=fast, device=device,
                       strict_versions=strict_versions)


def load_export(path: Path, *, registry, tta: bool | None = None, overlap: float | None = None,
                fast: bool | None = None, device: str = "auto", strict_versions: bool = False) -> LoadedRun:
    """An export ready to predict: its network, and the preprocessor, predictor and post-processing its
    sidecar names, built through the registry (the plugin of its network is not needed)."""
    from biom3d.core import exported
    from biom3d.core.config import Envelope, apply_overrides
    from biom3d.core.context import RunContext
    from biom3d.core.devices import resolve_device

    dev = resolve_device(device)
    model = exported.load(path, device=dev)
    exported.check_plugins(model, registry, strict_versions=strict_versions)
    settings = model.settings
    ctx = RunContext(**model.context, device=str(dev), fingerprint=settings["fingerprint"])
    comps = {k: v for k, v in settings["components"].items() if v is not None}
    envs = {k: [Envelope(**e) for e in v] if isinstance(v, list) else Envelope(**v) for k, v in comps.items()}
    predictor = registry.resolve("predictor", envs["predictor"].name)
    params = apply_overrides(envs["predictor"].params, predictor_overrides(predictor, tta=tta, overlap=overlap, fast=fast))
    if model.weights == "onnx" and "channels_last" in predictor.spec.params.model_fields:
        params["channels_last"] = False  # ONNX Runtime takes contiguous arrays: no layout to convert to
    post_envs = envs.get("postprocessors", [])
    post = [registry.resolve("postprocessor", e.name).build(e.params, ctx) for e in post_envs]
    log.info("predict: %s", model.describe())
    return LoadedRun(path, path, None, model.network,
                     registry.resolve("preprocessor", envs["preprocessor"].name).build(envs["preprocessor"].params, ctx),
                     predictor.build(params, ctx), settings["fingerprint"], ctx,
                     post, envs.get("reader"), envs.get("writer"), postprocessing=_describe(registry, post_envs))


def load_run(run_dir: Path, *, registry, tta: bool | None = None, overlap: float | None = None,
             fast: bool | None = None, device: str = "auto", checkpoint: str | None = None,
             strict_versions: bool = False, backend: str = "torch") -> LoadedRun:
    """A run ready to predict, with the weights ``checkpoint`` selects ("best", "last"; None: best when the run
    has one, else the newest), its network run by ``backend`` ("torch", or "onnxruntime" on the CPU)."""
    from biom3d.core import runs
    from biom3d.core.builder import Builder
    from biom3d.core.config import load_config
    from biom3d.core.devices import resolve_device

    run_dir = runs.trained_run(run_dir)
    config = runs.load_run_config(run_dir, registry=registry, strict_versions=strict_versions)
    if tta is not None or overlap is not None or fast is not None:
        changes = predictor_overrides(registry.resolve("predictor", config.predictor.name), tta=tta, overlap=overlap,
                                      fast=fast)
        config = load_config(run_dir / runs.CONFIG, registry=registry,  # its plugins were checked just now
                             overrides={f"predictor.params.{k}": v for k, v in changes.items()})
    candidates = runs.checkpoint_files(run_dir, checkpoint)
    fp_path = run_dir / runs.FINGERPRINT
    if not fp_path.is_file():
        raise RunError(f"{run_dir} has no {runs.FINGERPRINT}: it was not trained on preprocessed data")
    dev = resolve_device(device)
    if backend not in ("torch", "onnxruntime"):
        raise InputError(f"backend {backend!r}: choose torch or onnxruntime")
    if backend == "onnxruntime" and dev.type != "cpu":
        raise InputError(f"--backend onnxruntime runs on the CPU, not {dev}: add --device cpu, or use --backend torch")
    builder = Builder(config, registry=registry, device=str(dev))
    model = builder.build("model")
    state, path = _first_readable(candidates, dev)
    model.load_state_dict(state["model"])
    model.to(dev).eval()
    epoch = int(state["epoch"]) + 1 if isinstance(state.get("epoch"), int) else None
    log.info("predict: %s with checkpoints/%s%s", run_dir, path.name, f", epoch {epoch}" if epoch else "")
    if backend == "onnxruntime":
        from biom3d.core.exported import onnxruntime_network

        patch = config.predictor.params.get("patch_size") or config.patch_size
        model = onnxruntime_network(model, tuple(patch), config.in_channels, config.model.name)
    return LoadedRun(run_dir, path, builder, model, builder.build("preprocessor"), builder.build("predictor"),
                     json.loads(fp_path.read_text(encoding="utf-8")), builder.context, builder.build("postprocessors"),
                     config.reader, config.writer, epoch, _describe(registry, config.postprocessors or []))


def predictor_overrides(predictor, *, tta: bool | None, overlap: float | None, fast: bool | None) -> dict[str, Any]:
    """The predictor params a prediction's options set (None: left as they are). With ``fast``, the ones not
    given are reset to their defaults, so that the predictor's fast mode chooses them (a run's saved config
    names every param)."""
    fields = predictor.spec.params.model_fields
    if fast is not None and "fast" not in fields:
        raise InputError(f"--fast: predictor {predictor.qid!r} has no fast mode (its params: {', '.join(fields)}); "
                         "drop --fast, or set its own params with --overlap and --tta")
    changes: dict[str, Any] = {"tta": tta, "overlap": overlap}
    if fast is not None:
        changes["fast"] = fast
        if fast:
            changes = {k: RESET if v is None and k in fields else v for k, v in changes.items()}
    return changes


def _first_readable(paths: Sequence[Path], device) -> tuple[dict[str, Any], Path]:
    """The first of ``paths`` that loads; each unreadable one is a warning, all of them an error."""
    from biom3d.core.checkpoints import load_checkpoint

    errors = []
    for path in paths:
        try:
            state = load_checkpoint(path, device)
        except RunError as exc:
            errors.append(exc)
            if path != paths[-1]:
                log.warning("%s; using %s instead", exc, paths[len(errors)].name)
            continue
        return state, path
    if len(errors) == 1:
        raise errors[0]
    raise RunError(f"no usable checkpoint in {paths[0].parent}: " + "; ".join(map(str, errors)))


def check_ensemble(runs: Sequence[LoadedRun]) -> None:
    """Runs whose outputs cannot be averaged are refused; runs that post-process differently are ensembled with
    a warning, since the averaged probabilities go through the first run's post-processing only."""
    first = runs[0].context
    for run in runs[1:]:
        cfg = run.context
        if (cfg.num_classes, cfg.multilabel, cfg.in_channels) != (first.num_classes, first.multilabel, first.in_channels):
            raise InputError(
                f"runs {runs[0].run_dir} and {run.run_dir} cannot be ensembled: classes/multilabel/channels differ "
                f"({first.num_classes}/{first.multilabel}/{first.in_channels} vs "
                f"{cfg.num_classes}/{cfg.multilabel}/{cfg.in_channels})"
            )
        if run.postprocessing != runs[0].postprocessing:
            log.warning("predict: %s post-processes with [%s], %s with [%s]: the ensemble uses the first run's; "
                        "give the run whose post-processing you want first", runs[0].run_dir,
                        ", ".join(runs[0].postprocessing), run.run_dir, ", ".join(run.postprocessing))


def _describe(registry, envelopes) -> tuple[str, ...]:
    """Each post-processor as "qid {params}", its defaults filled in: ``{}`` and the default value are the same."""
    described = []
    for env in envelopes:
        comp = registry.resolve("postprocessor", env.name)
        params = comp.spec.params.model_validate(env.params).model_dump()
        described.append(f"{comp.qid} {dict(sorted(params.items()))}")
    return tuple(described)

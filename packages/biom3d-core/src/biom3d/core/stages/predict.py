"""`biom3d predict`: preprocess each input exactly as the run's training data, predict with one run or an
ensemble (probabilities averaged on the original grid), post-process, and write masks in the input's format
and metadata under the same relative names.

Each model is a run folder or an export (`biom3d export`: a TorchScript or ONNX file with its sidecar, or a
bioimage.io package, see :mod:`biom3d.core.exported`). An export brings its own inference settings, so it
predicts without the plugin that provides its network; both kinds become a :class:`LoadedRun`, and everything
after loading is the same for both."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from biom3d.core.atomic import remove_stale_temporaries
from biom3d.core.config import RESET
from biom3d.core.errors import DataError, InputError, RunError
from biom3d.core.scan import Item, scan_input
from biom3d.core.stages.probabilities import SUFFIX, probabilities_folder, save_probabilities

log = logging.getLogger("biom3d")
DICOM_OUTPUT_SUFFIX = ".nii.gz"


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


def predict(run_dirs: Sequence[str | Path], inputs: str | Path, output: str | Path, *, tta: bool | None = None,
            overlap: float | None = None, fast: bool | None = None, device: str = "auto", checkpoint: str | None = None,
            overwrite: bool = False, skip_existing: bool = False, reader: str | None = None,
            writer: str | None = None, strict_versions: bool = False, registry=None,
            progress: bool = True, backend: str = "torch", shard: tuple[int, int] | None = None,
            probabilities: str | Path | None = None) -> list[Path]:
    """Predict every image under ``inputs`` (a file, a DICOM folder, or a folder of them) into ``output``.
    ``checkpoint`` ("best", "last"; None: best when a run has one) picks each run's weights.
    ``tta``, ``overlap`` and ``fast`` (None: each run's) set the predictor's params; ``fast`` lets the predictor
    choose its fast overlap and flips wherever ``tta``/``overlap`` are not given, even if the run's config has them.
    ``skip_existing`` resumes an interrupted prediction instead of refusing to touch existing outputs.
    ``reader``/``writer`` (ids) override the run config's ``reader:``/``writer:``; without a writer, masks are
    written in the input's format, and every output's writer is found before any prediction starts.
    ``run_dirs`` may name exports (TorchScript/ONNX file, bioimage.io zip) instead of run folders.
    ``backend`` runs a run folder's network with "torch" or "onnxruntime" (CPU; exported in memory).
    ``shard`` (I, N) predicts part I (from 0) of N of the inputs; under torchrun each rank predicts its share
    (of that part) on its own device: the shares together are the outputs of one process, byte for byte.
    ``probabilities`` (a folder) also saves each image's averaged probabilities there, before post-processing,
    under the same relative name (:func:`~biom3d.core.stages.probabilities.save_probabilities`); a mask and its
    probabilities are one output for ``overwrite`` and ``skip_existing`` (which writes both again where one is
    missing)."""
    from tqdm.auto import tqdm

    from biom3d.core import distributed
    from biom3d.core.discovery import get_registry

    device = str(distributed.rank_device(device, training=False))

    registry = registry or get_registry()
    runs = [load_model(Path(r), registry=registry, tta=tta, overlap=overlap, fast=fast, device=device,
                       checkpoint=checkpoint, strict_versions=strict_versions, backend=backend) for r in run_dirs]
    if not runs:
        raise InputError("give at least one run folder (or export) to predict with")
    _check_ensemble(runs)
    reader_env = _choice(registry, "reader", reader, runs[0].reader)
    writer_env = _choice(registry, "writer", writer, runs[0].writer)
    root, items = scan_input(Path(inputs), registry, reader_env.name if reader_env else None)
    output = Path(output)
    out = output.resolve()
    inside = [i for i in items if out != root.resolve() and Path(i.path).resolve().is_relative_to(out)]
    if inside:  # --output a folder inside --input: a re-run would predict the last run's masks as images
        log.info("predict: %d file(s) under the output folder %s are outputs, not inputs", len(inside), output)
        items = [i for i in items if i not in inside]
    writers = {item.key: _writer_for(registry, item, writer_env) for item in items}
    log.info("predict: reading with %s, writing with %s", ", ".join(sorted({i.reader for i in items})),
             ", ".join(sorted({w.qid for w in writers.values()})))
    targets = [(item, output / output_name(item, writers[item.key].spec)) for item in items]
    probs_dir = probabilities_folder(probabilities, output, root if root == Path(inputs) else None)
    probs_of = {item.key: probs_dir / (item.key + SUFFIX) for item in items} if probs_dir else {}

    def outputs(item: Item, target: Path) -> list[Path]:
        return [target, probs_of[item.key]] if probs_of else [target]

    world = distributed.current()
    if shard is not None or world.distributed:  # before skipping: each process keeps the same share on a re-run
        total, targets = len(targets), distributed.shard(targets, shard, world)
        part = f"part {shard[0]}/{shard[1]}" if shard else "inputs"
        rank = f", rank {world.rank} of {world.size}" if world.distributed else ""
        log.info("predict: %s%s: %d of %d image(s)", part, rank, len(targets), total)
    if skip_existing and not overwrite:
        targets = [(item, t) for item, t in targets if not all(p.exists() for p in outputs(item, t))]
    existing = [p for item, t in targets for p in outputs(item, t) if p.exists()]
    replaceable = set(existing)  # what the check below lets be written again
    if existing and skip_existing and not overwrite:  # a mask without its probabilities (or the reverse)
        log.info("predict: %d output file(s) of unfinished images are written again, e.g. %s", len(existing),
                 existing[0])
    elif existing and not overwrite:
        raise DataError(f"{len(existing)} output file(s) already exist, e.g. {existing[0]}; pass --overwrite to "
                        "replace them or choose another --output" + (" / --probabilities" if probs_of else ""))
    remove_stale_temporaries(output, targets=[t for _, t in targets])  # what a killed prediction left
    if probs_dir is not None:
        remove_stale_temporaries(probs_dir, targets=[probs_of[item.key] for item, _ in targets])
    first = runs[0]
    post = first.postprocessors
    written = []
    for item, target in tqdm(targets, desc="predict", disable=not progress, unit="img"):
        params = reader_env.params if reader_env is not None and reader_env.name == item.reader else {}
        image = registry.resolve("reader", item.reader).build(params, first.context)(item.path)
        mask = predict_image(runs, image)
        if probs_of:
            save_probabilities(probs_of[item.key], _to_input_layout(mask, image), image, first.context)
        for step in post:
            mask = step(mask)
        mask = _to_input_layout(mask, image)
        replace = overwrite or target in replaceable
        _build_writer(writers[item.key], writer_env, first.context, replace)(target, mask, image)
        written.append(target)
    return written


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


def predict_image(runs: Sequence[LoadedRun], image) -> np.ndarray:
    """Probabilities (C, D, H, W) on the image's own grid, averaged over the runs. An image whose channels
    differ from a run's is refused before the network sees it; a missing spacing or a 2D image for a 3D run
    is predicted with a warning that says what was assumed."""
    total = None
    for i, run in enumerate(runs):
        x = run.preprocessor.image(image, run.fingerprint)
        _check_channels(run, image, x)
        if i == 0:
            _warn_assumptions(run, image, x)
        probs = run.preprocessor.restore(run.predictor([run.model], x), image)
        total = probs if total is None else total + probs
    return (total / len(runs)).numpy()


def output_name(item: Item, writer=None) -> str:
    """Same relative name as the input, with a suffix of the format written: the input's own when the writer
    writes it, else the writer's first suffix (a chosen ``io/npy`` writes ``.npy``); DICOM series become
    NIfTI files unless a writer is chosen."""
    suffix = DICOM_OUTPUT_SUFFIX if item.path.is_dir() else item.path.name[len(Path(item.key).name):]
    if writer is not None and not writer.matches("x" + suffix):
        suffix = writer.suffixes[0]
    return item.key + suffix


def _check_channels(run: LoadedRun, image, x) -> None:
    expected = run.context.in_channels
    found = int(x.shape[0])
    if found != expected:
        raise DataError(f"{image.path}: {found} channel(s) (stored shape {tuple(np.shape(image.array))}), but the run "
                        f"{run.run_dir} was trained on {expected} (in_channels); give images with {expected} "
                        "channel(s), or set preprocessor.params.channel_axis in the run's config.yaml if the "
                        "channel axis was misread")


def _warn_assumptions(run: LoadedRun, image, x) -> None:
    """What prediction assumes about an image unlike the training data, said once per image."""
    spacing = run.fingerprint.get("spacing")
    if spacing is not None and image.spacing is None:
        log.warning("%s: no voxel spacing in the file; predicted as if it had the training spacing %s "
                    "(not resampled)", image.path, " x ".join(f"{v:g}" for v in spacing))
    median = run.fingerprint.get("median_shape") or []
    trained_3d = bool(median) and median[0] > 1
    if trained_3d and int(x.shape[1]) == 1:
        log.warning("%s: a 2D image, but the run %s was trained on 3D volumes (median shape %s): predicted as a "
                    "volume of one slice", image.path, run.run_dir, " x ".join(f"{v:g}" for v in median))
    elif median and not trained_3d and int(x.shape[1]) > 1:
        log.warning("%s: a 3D volume, but the run %s was trained on 2D images: predicted as one %d-slice volume",
                    image.path, run.run_dir, int(x.shape[1]))


def _to_input_layout(mask: np.ndarray, image) -> np.ndarray:
    """Drop the depth axis the preprocessor added to 2D inputs."""
    axes = image.meta.get("axes")
    flat = np.asarray(image.array).ndim == 2 or (axes is not None and "Z" not in axes.upper())
    if flat and mask.shape[-3] == 1:  # a 2D input the preprocessor did not read as a volume
        return mask[..., 0, :, :] if mask.ndim == 4 else mask[0]
    return mask


def _choice(registry, kind: str, name: str | None, env):
    """The reader/writer chosen on the command line, else the run config's (an Envelope), else None."""
    from biom3d.core.config import Envelope

    if name:
        return Envelope(name=registry.resolve(kind, name).qid)
    return env


def _writer_for(registry, item: Item, env):
    """The chosen writer, else the one for the input's format; no writer for it is an error naming the choices."""
    from biom3d.core.registry import ResolutionError

    if env is not None:
        return registry.resolve("writer", env.name)
    fmt = item.path.with_name(item.path.name + DICOM_OUTPUT_SUFFIX) if item.path.is_dir() else item.path
    try:
        return registry.writer_for(fmt)
    except ResolutionError as exc:
        raise DataError(f"cannot write the prediction of {item.path}: {exc}") from exc


def _build_writer(comp, env, ctx, overwrite: bool):
    params = dict(env.params) if env is not None and env.name == comp.qid else {}
    if "overwrite" in comp.spec.params.model_fields:
        params["overwrite"] = overwrite
    return comp.build(params, ctx)


def _check_ensemble(runs: Sequence[LoadedRun]) -> None:
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

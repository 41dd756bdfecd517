"""`biom3d predict`: preprocess each input exactly as the run's training data, predict with one run or an
ensemble (probabilities averaged on the original grid), post-process, and write masks in the input's format
and metadata under the same relative names.

Each model is a run folder or an export (`biom3d export`: a TorchScript or ONNX file with its sidecar, or a
bioimage.io package, see :mod:`biom3d.core.exported`). An export brings its own inference settings, so it
predicts without the plugin that provides its network; both kinds become a
:class:`~biom3d.core.stages.loading.LoadedRun`, and everything after loading is the same for both."""

from __future__ import annotations

import logging
from collections.abc import Collection, Sequence
from pathlib import Path

import numpy as np

from biom3d.core.atomic import remove_stale_temporaries
from biom3d.core.errors import DataError, InputError
from biom3d.core.scan import Item, scan_input
from biom3d.core.stages.loading import LoadedRun, check_ensemble, load_model, model_paths
from biom3d.core.stages.probabilities import SUFFIX, probabilities_folder, save_probabilities

log = logging.getLogger("biom3d")
DICOM_OUTPUT_SUFFIX = ".nii.gz"


def predict(run_dirs: Sequence[str | Path], inputs: str | Path, output: str | Path, *, tta: bool | None = None,
            overlap: float | None = None, fast: bool | None = None, device: str = "auto", checkpoint: str | None = None,
            overwrite: bool = False, skip_existing: bool = False, reader: str | None = None,
            writer: str | None = None, strict_versions: bool = False, registry=None,
            progress: bool = True, backend: str = "torch", shard: tuple[int, int] | None = None,
            probabilities: str | Path | None = None, keys: Collection[str] | None = None) -> list[Path]:
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
    missing). ``keys`` predicts only the images of ``inputs`` with these case keys (relative paths without
    suffix, as in folds.csv): a cross-validation fold's held-out images."""
    from tqdm.auto import tqdm

    from biom3d.core import distributed
    from biom3d.core.discovery import get_registry

    device = str(distributed.rank_device(device, training=False))

    registry = registry or get_registry()
    runs = [load_model(r, registry=registry, tta=tta, overlap=overlap, fast=fast, device=device,
                       checkpoint=checkpoint, strict_versions=strict_versions, backend=backend)
            for r in model_paths(run_dirs)]
    if not runs:
        raise InputError("give at least one run folder (or export) to predict with")
    check_ensemble(runs)
    reader_env = _choice(registry, "reader", reader, runs[0].reader)
    writer_env = _choice(registry, "writer", writer, runs[0].writer)
    root, items = scan_input(Path(inputs), registry, reader_env.name if reader_env else None)
    if keys is not None:
        items = _only(items, keys, inputs)
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


def require_writers(inputs: str | Path, *, registry, reader: str | None = None, writer: str | None = None) -> None:
    """Refuse, before a pipeline trains, test images that no writer can write a mask for (it stopped at the
    predict stage, after the training)."""
    from biom3d.core.config import Envelope

    _, items = scan_input(Path(inputs), registry, reader)
    for item in items:
        _writer_for(registry, item, Envelope(name=writer) if writer else None)


def _only(items: list[Item], keys: Collection[str], inputs: str | Path) -> list[Item]:
    unknown = sorted(set(keys) - {i.key for i in items})
    if unknown:
        raise DataError(f"{inputs} holds no image named {', '.join(unknown[:5])}"
                        + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""))
    return [i for i in items if i.key in set(keys)]


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
    from biom3d.core.units import shown, um_per_unit

    spacing, unit = run.fingerprint.get("spacing"), run.fingerprint.get("spacing_unit")
    if spacing is not None and image.spacing is None:
        log.warning("%s: no voxel spacing in the file; predicted as if it had the training spacing %s %s"
                    "(not resampled)", image.path, " x ".join(f"{v:g}" for v in spacing), shown(unit) + " " if unit else "")
    elif spacing is not None and unit and um_per_unit((image.meta or {}).get("unit")) is None:
        log.warning("%s: its spacing %s has no length unit (%s); taken as %s, the training images' unit",
                    image.path, list(image.spacing), (image.meta or {}).get("unit") or "none given", shown(unit))
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

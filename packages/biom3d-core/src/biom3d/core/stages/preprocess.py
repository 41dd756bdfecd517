"""`biom3d preprocess`: scan, fingerprint, auto-configure, check and transform every case, split folds and
write a config that `biom3d train` uses as is.

Output folder layout (the contract with every dataset plugin)::

    images/<key>.npy   float32 (C, D, H, W)      masks/<key>.npy   label map (D, H, W) or (K, D, H, W)
    fg/<key>.npz       per class "1".."K": int32 (N, 3) foreground voxel coordinates
    done/<key>.json    size and checksum of the case's three files, written once they are complete
    fingerprint.json   config.yaml   preprocess.json (what produced this folder)
    folds.csv          columns ``filename,fold`` (``<key>.npy``, fold index): fold f validates, the rest train

Re-running skips a case only when its three files still match the sizes and checksums recorded when they
were finished (a file cut short by a full disk or an interrupted copy is redone), and removes the
temporaries a killed run left. Every output is written atomically, so an interrupted run leaves no
half-written file. Only an empty folder, or one this data's own earlier preprocess wrote, is used without
``overwrite``: a folder of other files or of other data is refused, never overwritten silently.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from biom3d.core.atomic import atomic_path, atomic_write_text
from biom3d.core.config import AutoConfigSettings, Envelope, safe_name
from biom3d.core.context import RunContext
from biom3d.core.errors import Biom3dError, DataError, PluginError
from biom3d.core.folds import make_folds, write_folds
from biom3d.core.parallel import parallel_map, worker_pool
from biom3d.core.protocols import FINGERPRINT_KEYS, PLAN_KEYS
from biom3d.core.scan import Case, scan_dataset
from biom3d.core.specs import param_defaults
from biom3d.core.stages.preprocess_folder import claim_output, fingerprint_hash

log = logging.getLogger("biom3d")
# a single image is split along its longest axis: the first quarter validates, the rest trains (the paper's
# split_rate_for_single_img)
SPLIT_VAL_FRACTION = 0.25
DONE = "done"  # done/<key>.json: what a finished case's files must still be for a re-run to skip it
IN_PROCESS_BYTES = 256 * 2**20  # below this much input, worker start-up (spawn + imports) outweighs the gain


@dataclass
class PreprocessResult:
    out_dir: Path
    config_path: Path
    fingerprint: dict[str, Any]
    plan: dict[str, Any]  # what the preprocessor's auto-configuration chose (patch_size, num_pools, batch_size...)
    processed: int
    skipped: int
    stack: str | None = None
    warnings: list[str] = field(default_factory=list)


def preprocess_dataset(
    images: Path,
    masks: Path,
    out: Path,
    *,
    num_classes: int,
    multilabel: bool = False,
    workers: int = 2,
    stack: str | None = None,
    preprocessor: str | None = None,
    params: dict[str, Any] | None = None,
    name: str | None = None,
    seed: int = 42,
    max_dim: int = 128,
    max_pool: int = 5,
    max_batch: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
    config_extra: dict[str, Any] | None = None,
    reader: str | dict[str, Any] | None = None,
    registry=None,
) -> PreprocessResult:
    """Preprocess ``images``/``masks`` into ``out`` with the preprocessor of ``stack`` (default: the installed
    default stack) or the one named; ``params`` update its params. ``reader`` (an id or ``{name, params}``)
    reads every file it claims; the others go by suffix."""
    from biom3d.core.discovery import get_registry

    registry = registry or get_registry()
    images, masks, out = Path(images), Path(masks), Path(out)
    forced = _reader_envelope(registry, reader)
    cases = scan_dataset(images, masks, registry, reader=forced.name if forced else None)
    _log_readers(cases)
    stack_id, env = _preprocessor_envelope(registry, stack, preprocessor, params)
    comp = registry.resolve("preprocessor", env.name)
    prep_params = comp.validate_params(env.params)
    ctx = RunContext(num_classes=num_classes, multilabel=multilabel)
    readers = {c.qid: (c.spec, c.validate_params(forced.params if forced and c.qid == forced.name else {}))
               for c in registry.components("reader")}
    job = _Job(comp.spec, prep_params, ctx, readers)
    budget = AutoConfigSettings(max_dim=max_dim, max_pool=max_pool, max_batch=max_batch)
    if _input_bytes(cases) < IN_PROCESS_BYTES:
        workers = 0  # starting workers would cost more than they save

    with worker_pool(min(workers, len(cases))) as pool:  # one pool for both passes: workers import torch once
        stats = parallel_map(_stats_task, cases, args=(job,), pool=pool, desc="scan", progress=progress)
        errors = [s for s in stats if isinstance(s, str)]
        if errors:
            raise DataError(f"{len(errors)} case(s) cannot be used:\n  " + "\n  ".join(errors[:10])
                            + ("\n  ..." if len(errors) > 10 else "") + "\nNothing was written.")
        prep = job.preprocessor()
        fingerprint = _checked(prep.fingerprint(stats), FINGERPRINT_KEYS, comp, "fingerprint")
        plan = _checked(prep.plan(fingerprint, budget), PLAN_KEYS, comp, "plan", exact=False)
        claim_output(out, {"fingerprint": fingerprint_hash(fingerprint), "preprocessor": comp.qid,
                            "params": prep_params.model_dump(mode="json"), "images": str(images.resolve()),
                            "masks": str(masks.resolve())}, overwrite, fingerprint=fingerprint,
                      defaults=param_defaults(type(prep_params)))
        split = len(cases) == 1
        todo = [c for c in cases if overwrite or not _done(out, c.key, split)]
        parallel_map(_process_task, todo, args=(job, fingerprint, out, split), pool=pool, desc="preprocess",
                     progress=progress)

    keys = [f"{c.key}-{part}" for c in cases for part in ("train", "val")] if split else [c.key for c in cases]
    # a single image: fold 0 validates on its first quarter and trains on the rest
    folds = {f"{k}.npy": 0 if k.endswith("-val") else 1 for k in keys} if split else \
        make_folds([f"{k}.npy" for k in keys], seed=seed)
    write_folds(out / "folds.csv", folds)
    atomic_write_text(out / "fingerprint.json", json.dumps(fingerprint, indent=2))
    config_path = out / "config.yaml"
    raw = _config(images, masks, fingerprint, plan, budget, stack_id, Envelope(name=comp.qid, params=prep_params.model_dump(mode="json")),
                  name or out.name, {**({"reader": forced.model_dump()} if forced else {}), **(config_extra or {})})
    _write_config(config_path, raw, registry)
    warnings = [w for s in stats for w in s.warnings]
    _log_warnings(out, warnings)
    return PreprocessResult(out, config_path, fingerprint, plan, len(todo), len(cases) - len(todo), stack_id, warnings)


def _preprocessor_envelope(registry, stack: str | None, preprocessor: str | None,
                           params: dict[str, Any] | None) -> tuple[str | None, Envelope]:
    """The chosen stack's id and the preprocessor to use: the one named, else the stack's (``params`` on top)."""
    from biom3d.core.stacks import choose_stack, stack_envelopes

    chosen = choose_stack(registry, stack)
    envelopes = stack_envelopes(registry, chosen) if chosen is not None else {}
    if preprocessor is not None:
        return (chosen.qid if chosen else None), Envelope(name=preprocessor, params=params or {})
    base = envelopes.get("preprocessor")
    if base is None:
        where = f"stack '{chosen.qid}' names none" if chosen else "no installed plugin declares a stack"
        raise PluginError(f"no preprocessor to use: {where}; pass --preprocessor (installed: "
                          f"{', '.join(c.qid for c in registry.components('preprocessor')) or 'none'})")
    env = Envelope.model_validate(base)
    return chosen.qid, Envelope(name=env.name, params={**env.params, **(params or {})})


def _reader_envelope(registry, reader: str | dict[str, Any] | None) -> Envelope | None:
    """The chosen reader as a resolved envelope (qualified id), or None."""
    if not reader:
        return None
    env = Envelope.model_validate(reader)
    comp = registry.resolve("reader", env.name)
    return Envelope(name=comp.qid, params=comp.validate_params(env.params).model_dump(mode="json"))


def _log_readers(cases: list[Case]) -> None:
    counts: dict[str, int] = {}
    for item in (i for c in cases for i in (c.image, c.mask) if i is not None):
        counts[item.reader] = counts.get(item.reader, 0) + 1
    log.info("reading %s", ", ".join(f"{n} file(s) with {qid}" for qid, n in sorted(counts.items())))


def _checked(values: Any, keys: tuple[str, ...], comp, method: str, *, exact: bool = True) -> dict[str, Any]:
    """A third-party preprocessor's answer, checked against the protocol before anything is written."""
    if not isinstance(values, dict):
        raise PluginError(f"preprocessor '{comp.qid}': {method}() returned {type(values).__name__}, expected a dict "
                          f"with {', '.join(keys)} (see biom3d.core.protocols.Preprocessor)")
    missing = [k for k in keys if k not in values] if exact else []
    unknown = [] if exact else [k for k in values if k not in keys]
    if missing or unknown:
        what = f"lacks {', '.join(missing)}" if missing else f"returned unknown keys {', '.join(unknown)}"
        raise PluginError(f"preprocessor '{comp.qid}': {method}() {what} (see biom3d.core.protocols.Preprocessor)")
    return values


@dataclass(frozen=True)
class _Job:
    """Everything a worker needs, picklable (specs carry import strings, not live objects)."""

    spec: Any
    params: Any
    ctx: RunContext
    readers: dict[str, Any]

    def preprocessor(self):
        return self.spec.load()(self.params, self.ctx)

    def read(self, item):
        spec, params = self.readers[item.reader]
        try:
            return spec.load()(params, self.ctx)(item.path)
        except Biom3dError:
            raise
        except Exception as exc:
            raise DataError(f"{item.path}: reader '{item.reader}' cannot read it ({type(exc).__name__}: {exc}); "
                            "choose another with `reader:` in the config or --reader") from exc


def _stats_task(case: Case, job: _Job):
    """Per-case statistics, or a one-line error string (collected so that every bad file is reported)."""
    try:
        return job.preprocessor().analyse(case.key, job.read(case.image), job.read(case.mask))
    except Biom3dError as exc:
        return str(exc)


def _process_task(case: Case, job: _Job, fingerprint: dict[str, Any], out: Path, split: bool) -> None:
    prep = job.preprocessor()
    image, mask = prep.case(job.read(case.image), job.read(case.mask), fingerprint)
    if not split:
        _save_case(out, case.key, image, mask, prep)
        return
    axis = int(np.argmax(image.shape[1:]))
    cut = max(1, math.floor(image.shape[1 + axis] * SPLIT_VAL_FRACTION))
    for part, sl in (("val", slice(0, cut)), ("train", slice(cut, None))):
        index = [slice(None)] * 4
        index[1 + axis] = sl
        m_index = index[1:] if mask.ndim == 3 else index
        _save_case(out, f"{case.key}-{part}", image[tuple(index)], mask[tuple(m_index)], prep)


def _input_bytes(cases: list[Case]) -> int:
    paths = [p for c in cases for p in (c.image.path, c.mask.path if c.mask else None) if p is not None]
    return sum(f.stat().st_size for p in paths for f in ([p] if p.is_file() else p.rglob("*")) if f.is_file())


def _save_case(out: Path, key: str, image: np.ndarray, mask: np.ndarray, prep) -> None:
    fg = prep.foreground(mask, key)
    image = np.ascontiguousarray(image.astype(np.float32, copy=False))
    mask = np.ascontiguousarray(mask)
    record = {
        f"masks/{key}.npy": _save(out / "masks" / f"{key}.npy", lambda f: np.save(f, mask), mask.nbytes),
        f"fg/{key}.npz": _save(out / "fg" / f"{key}.npz", lambda f: np.savez(f, **fg)),
        f"images/{key}.npy": _save(out / "images" / f"{key}.npy", lambda f: np.save(f, image), image.nbytes),
    }
    atomic_write_text(out / DONE / f"{key}.json", json.dumps(record))  # last: its presence marks "done"


def _save(path: Path, write: Callable[[IO[bytes]], None], size: int | None = None) -> dict[str, Any]:
    """Write one output atomically; returns its size and checksum, which a re-run verifies."""
    with atomic_path(path, size=size) as tmp:
        with open(tmp, "wb") as f:
            write(f)
        return _fingerprint_file(tmp)


def _fingerprint_file(path: Path) -> dict[str, Any]:
    with open(path, "rb") as f:
        digest = hashlib.file_digest(f, "blake2b").hexdigest()[:32]
    return {"size": path.stat().st_size, "blake2b": digest}


def _done(out: Path, key: str, split: bool) -> bool:
    """Whether a case's files are complete: each as big and with the checksum recorded when it was written."""
    keys = [f"{key}-train", f"{key}-val"] if split else [key]
    for k in keys:
        try:
            record = json.loads((out / DONE / f"{k}.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False  # not finished (or written before records existed): redo it
        for rel, expected in record.items():
            path = out / rel
            if not path.is_file() or path.stat().st_size != expected.get("size") or \
                    _fingerprint_file(path) != expected:
                log.warning("%s is missing or not what was written (cut short or changed since): case %s is "
                            "redone", path, key)
                return False
    return True


def _config(images: Path, masks: Path, fingerprint: dict[str, Any], plan: dict[str, Any], budget: AutoConfigSettings,
            stack: str | None, preprocessor: Envelope, name: str, extra: dict[str, Any]) -> dict[str, Any]:
    """What preprocessing found, as a config: the stack fills every other slot when training reads it."""
    from biom3d.core.config import apply_overrides

    shared = {k: plan[k] for k in ("patch_size", "aug_patch_size", "num_pools") if k in plan}
    raw: dict[str, Any] = {
        "name": safe_name(name),
        **({"stack": stack} if stack else {}),
        "num_classes": fingerprint["num_classes"],
        "in_channels": fingerprint["in_channels"],
        "multilabel": fingerprint["multilabel"],
        **{k: list(v) for k, v in shared.items()},
        "spacing": fingerprint["spacing"],
        "autoconfig": budget.model_dump(),
        "data": {"images": str(images.resolve()), "masks": str(masks.resolve()), "preprocessed": "."},
        "train": {"batch_size": plan["batch_size"]} if "batch_size" in plan else {},
        "preprocessor": preprocessor.model_dump(mode="json"),
    }
    return apply_overrides(raw, extra)


def _write_config(path: Path, raw: dict[str, Any], registry) -> None:
    import yaml

    from biom3d.core.config import validate
    from biom3d.core.errors import ConfigError

    try:
        validate(raw, registry=registry)
    except ConfigError as exc:
        log.warning("the written config does not validate with the installed plugins yet:\n%s", exc)
    buf = io.StringIO()
    buf.write("# Written by `biom3d preprocess`. Train with: biom3d train " + str(path) + "\n")
    yaml.safe_dump(raw, buf, sort_keys=False, default_flow_style=None)
    atomic_write_text(path, buf.getvalue())


def _log_warnings(out: Path, warnings: list[str]) -> None:
    if not warnings:
        return
    atomic_write_text(out / "preprocess.log", "\n".join(warnings) + "\n")
    for w in warnings[:5]:
        log.warning(w)
    if len(warnings) > 5:
        log.warning("... and %d more corrections, listed in %s", len(warnings) - 5, out / "preprocess.log")

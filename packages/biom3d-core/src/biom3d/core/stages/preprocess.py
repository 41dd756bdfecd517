"""`biom3d preprocess`: scan, fingerprint, auto-configure, check and transform every case, split folds and
write a config that `biom3d train` uses as is.

Output folder layout (the contract with every dataset plugin)::

    images/<key>.npy   float32 (C, D, H, W)      masks/<key>.npy   label map (D, H, W) or (K, D, H, W)
    fg/<key>.npz       per class "1".."K": int32 (N, 3) foreground voxel coordinates
    fingerprint.json   folds.csv   config.yaml   preprocess.json (what produced this folder)

Re-running skips cases whose three outputs exist; every output is written atomically, so an interrupted run
leaves no half-written file. A folder produced from other data or settings is never overwritten silently.
"""

from __future__ import annotations

import io
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from biom3d.core.atomic import atomic_path, atomic_write_text
from biom3d.core.autoconfig import AutoConfig, auto_config
from biom3d.core.context import RunContext
from biom3d.core.errors import Biom3dError, DataError
from biom3d.core.fingerprint import build_fingerprint, fingerprint_hash
from biom3d.core.folds import make_folds, write_folds
from biom3d.core.parallel import parallel_map, worker_pool
from biom3d.core.scan import Case, scan_dataset

log = logging.getLogger("biom3d")
SPLIT_TRAIN_FRACTION = 0.8
IN_PROCESS_BYTES = 256 * 2**20  # below this much input, worker start-up (spawn + imports) outweighs the gain


@dataclass
class PreprocessResult:
    out_dir: Path
    config_path: Path
    fingerprint: dict[str, Any]
    autoconfig: AutoConfig
    processed: int
    skipped: int
    warnings: list[str] = field(default_factory=list)


def preprocess_dataset(
    images: Path,
    masks: Path,
    out: Path,
    *,
    num_classes: int,
    multilabel: bool = False,
    workers: int = 2,
    preprocessor: str = "seg-preprocess",
    params: dict[str, Any] | None = None,
    name: str | None = None,
    seed: int = 42,
    max_dim: int = 128,
    max_pool: int = 5,
    max_batch: int = 16,
    overwrite: bool = False,
    progress: bool = True,
    config_extra: dict[str, Any] | None = None,
    registry=None,
) -> PreprocessResult:
    from biom3d.core.registry import get_registry

    registry = registry or get_registry()
    images, masks, out = Path(images), Path(masks), Path(out)
    cases = scan_dataset(images, masks, registry)
    comp = registry.resolve("preprocessor", preprocessor)
    prep_params = comp.validate_params(params or {})
    ctx = RunContext(num_classes=num_classes, multilabel=multilabel)
    readers = {c.qid: c.spec for c in registry.components("reader")}
    job = _Job(comp.spec, prep_params, ctx, readers)

    budget = {"max_dim": max_dim, "max_pool": max_pool, "max_batch": max_batch}
    if _input_bytes(cases) < IN_PROCESS_BYTES:
        workers = 0  # starting workers would cost more than they save

    with worker_pool(min(workers, len(cases))) as pool:  # one pool for both passes: workers import torch once
        stats = parallel_map(_stats_task, cases, args=(job,), pool=pool, desc="scan", progress=progress)
        errors = [s for s in stats if isinstance(s, str)]
        if errors:
            raise DataError(f"{len(errors)} case(s) cannot be used:\n  " + "\n  ".join(errors[:10])
                            + ("\n  ..." if len(errors) > 10 else "") + "\nNothing was written.")
        fingerprint = build_fingerprint(stats, num_classes=num_classes, multilabel=multilabel,
                                        resample=prep_params.resample)
        auto = auto_config(fingerprint["median_shape"], **budget)
        _claim_output(out, {"fingerprint": fingerprint_hash(fingerprint), "preprocessor": comp.qid,
                            "params": prep_params.model_dump(mode="json"), "images": str(images.resolve()),
                            "masks": str(masks.resolve())}, overwrite)
        split = len(cases) == 1
        todo = [c for c in cases if overwrite or not _done(out, c.key, split)]
        parallel_map(_process_task, todo, args=(job, fingerprint, out, split), pool=pool, desc="preprocess",
                     progress=progress)

    keys = [f"{c.key}-{part}" for c in cases for part in ("train", "val")] if split else [c.key for c in cases]
    # a single image: fold 0 validates on its 20% part and trains on the 80% part
    folds = {f"{k}.npy": 0 if k.endswith("-val") else 1 for k in keys} if split else \
        make_folds([f"{k}.npy" for k in keys], seed=seed)
    write_folds(out / "folds.csv", folds)
    atomic_write_text(out / "fingerprint.json", json.dumps(fingerprint, indent=2))
    config_path = out / "config.yaml"
    _write_config(config_path, images, masks, fingerprint, auto, prep_params, comp.qid, name or out.name,
                  config_extra or {}, registry, budget)
    warnings = [w for s in stats for w in s.warnings]
    _log_warnings(out, warnings)
    return PreprocessResult(out, config_path, fingerprint, auto, len(todo), len(cases) - len(todo), warnings)


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
        spec = self.readers[item.reader]
        try:
            return spec.load()(spec.params(), self.ctx)(item.path)
        except Biom3dError:
            raise
        except Exception as exc:
            raise DataError(f"{item.path}: cannot be read ({type(exc).__name__}: {exc})") from exc


def _stats_task(case: Case, job: _Job):
    """Per-case statistics, or a one-line error string (collected so that every bad file is reported)."""
    try:
        prep = job.preprocessor()
        img = job.read(case.image)
        image, axis = prep.image_array(img)
        msk = job.read(case.mask)
        mask, warnings = prep.mask_array(msk, image.shape[1:])
        return prep.stats(case.key, image, mask, img.spacing, axis, warnings)
    except Biom3dError as exc:
        return str(exc)


def _process_task(case: Case, job: _Job, fingerprint: dict[str, Any], out: Path, split: bool) -> None:
    prep = job.preprocessor()
    img = job.read(case.image)
    image, _ = prep.image_array(img)
    mask, _ = prep.mask_array(job.read(case.mask), image.shape[1:])
    image = prep.image(image, img.spacing, fingerprint)
    mask = prep.mask(mask, image.shape[1:], fingerprint)
    if not split:
        _save_case(out, case.key, image, mask, prep)
        return
    axis = int(np.argmax(image.shape[1:]))
    cut = max(1, int(round(image.shape[1 + axis] * SPLIT_TRAIN_FRACTION)))
    for part, sl in (("train", slice(0, cut)), ("val", slice(cut, None))):
        index = [slice(None)] * 4
        index[1 + axis] = sl
        m_index = index[1:] if mask.ndim == 3 else index
        _save_case(out, f"{case.key}-{part}", image[tuple(index)], mask[tuple(m_index)], prep)


def _input_bytes(cases: list[Case]) -> int:
    paths = [p for c in cases for p in (c.image.path, c.mask.path if c.mask else None) if p is not None]
    return sum(f.stat().st_size for p in paths for f in ([p] if p.is_file() else p.rglob("*")) if f.is_file())


def _save_case(out: Path, key: str, image: np.ndarray, mask: np.ndarray, prep) -> None:
    fg = prep.foreground(mask, key)
    _save_npy(out / "masks" / f"{key}.npy", mask)
    with atomic_path(out / "fg" / f"{key}.npz") as tmp, open(tmp, "wb") as f:
        np.savez(f, **fg)
    _save_npy(out / "images" / f"{key}.npy", image.astype(np.float32))  # last: its presence marks "done"


def _save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, np.ascontiguousarray(array))


def _done(out: Path, key: str, split: bool) -> bool:
    keys = [f"{key}-train", f"{key}-val"] if split else [key]
    return all((out / d / f"{k}{ext}").is_file() for k in keys for d, ext in
               (("images", ".npy"), ("masks", ".npy"), ("fg", ".npz")))


def _claim_output(out: Path, state: dict[str, Any], overwrite: bool) -> None:
    """Refuse to mix outputs of different data or settings in one folder, unless told to overwrite."""
    marker = out / "preprocess.json"
    if marker.is_file() and not overwrite:
        previous = json.loads(marker.read_text())
        if previous != state:
            changed = sorted(k for k in state if previous.get(k) != state[k])
            raise DataError(
                f"{out} already holds data preprocessed from other inputs or settings (differs in: "
                f"{', '.join(changed)}); choose another --out or pass --overwrite to replace it"
            )
    elif (not marker.is_file() and out.is_dir() and any(out.iterdir()) and not overwrite
          and not any((out / d).is_dir() for d in ("images", "masks", "fg"))):
        raise DataError(f"{out} exists and is not empty; choose another --out or pass --overwrite")
    atomic_write_text(marker, json.dumps(state, indent=2))


def _write_config(path: Path, images: Path, masks: Path, fingerprint: dict[str, Any], auto: AutoConfig,
                  prep_params, prep_id: str, name: str, extra: dict[str, Any], registry,
                  budget: dict[str, int]) -> None:
    import yaml

    from biom3d.core.config import apply_overrides, validate
    from biom3d.core.errors import ConfigError

    spacing = fingerprint["spacing"]
    raw: dict[str, Any] = {
        "name": _safe_name(name),
        "num_classes": fingerprint["num_classes"],
        "in_channels": fingerprint["in_channels"],
        "multilabel": fingerprint["multilabel"],
        "patch_size": list(auto.patch_size),
        "aug_patch_size": list(auto.aug_patch_size),
        "num_pools": list(auto.num_pools),
        "spacing": spacing,
        "autoconfig": budget,
        "data": {"images": str(images.resolve()), "masks": str(masks.resolve()), "preprocessed": "."},
        "train": {"batch_size": auto.batch_size},
        "preprocessor": {"name": prep_id, "params": prep_params.model_dump(mode="json")},
        **default_components(registry),
        "postprocessors": [{"name": "threshold" if fingerprint["multilabel"] else "argmax"}],
    }
    raw = apply_overrides(raw, extra)
    try:
        validate(raw, registry=registry)
    except ConfigError as exc:
        log.warning("the written config does not validate with the installed plugins yet:\n%s", exc)
    buf = io.StringIO()
    buf.write("# Written by `biom3d preprocess`. Train with: biom3d train " + str(path) + "\n")
    yaml.safe_dump(raw, buf, sort_keys=False, default_flow_style=None)
    atomic_write_text(path, buf.getvalue())


# The paper's method (biom3d-io + biom3d-models) first; MONAI's equivalents when only biom3d-monai is installed.
STACKS: tuple[dict[str, Any], ...] = (
    {"dataset": {"name": "patch-dataset"},
     "model": {"name": "unet3d-vgg-deep", "params": {"deep_supervision": True}},
     "loss": {"name": "deep-supervision", "params": {"loss": {"name": "dice-ce"}}},
     "metrics": [{"name": "dice"}, {"name": "iou"}]},
    {"dataset": {"name": "monai-dataset"},
     "model": {"name": "dyn-unet"},
     "loss": {"name": "dice-ce-loss"},
     "metrics": [{"name": "dice-metric"}, {"name": "mean-iou"}]},
)


def default_components(registry) -> dict[str, Any]:
    """For each slot, the first stack whose components are all installed (else the paper's names)."""
    from biom3d.core.registry import ResolutionError

    def available(kind: str, env: dict[str, Any]) -> bool:
        try:
            registry.resolve(kind, env["name"])
            return True
        except ResolutionError:
            return False

    kinds = {"dataset": "dataset", "model": "model", "loss": "metric", "metrics": "metric"}
    out: dict[str, Any] = {}
    for slot, kind in kinds.items():
        for stack in STACKS:
            envs = stack[slot] if isinstance(stack[slot], list) else [stack[slot]]
            if all(available(kind, e) for e in envs):
                out[slot] = stack[slot]
                break
        else:
            out[slot] = STACKS[0][slot]
    if out["model"] != STACKS[0]["model"] and out["loss"] == STACKS[0]["loss"]:
        out["loss"] = {"name": "dice-ce"}  # deep supervision belongs to the paper's network
    return out


def _safe_name(name: str) -> str:
    import re

    cleaned = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-.") or "biom3d"
    return cleaned if cleaned[0].isalnum() else "run-" + cleaned


def _log_warnings(out: Path, warnings: list[str]) -> None:
    if not warnings:
        return
    atomic_write_text(out / "preprocess.log", "\n".join(warnings) + "\n")
    for w in warnings[:5]:
        log.warning(w)
    if len(warnings) > 5:
        log.warning("... and %d more corrections, listed in %s", len(warnings) - 5, out / "preprocess.log")

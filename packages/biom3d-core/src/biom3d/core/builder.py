"""The Builder: turns a resolved config into live components, handing each factory the run context, and
runs the stages: ``Builder(config).train()``, ``Builder.resume(run_dir)``, ``Builder.finetune(run_dir, config)``.

Under torchrun each training joins the job's process group (:mod:`biom3d.core.distributed`): rank 0 creates
and writes the run folder while the others wait, then every rank trains its share.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from biom3d.core.config import SLOTS, Config, Envelope, load_config, validate
from biom3d.core.context import RunContext
from biom3d.core.discovery import get_registry
from biom3d.core.errors import ConfigError, InputError, Problem
from biom3d.core.registry import Component, Registry

log = logging.getLogger("biom3d")
ARCHITECTURE_FIELDS = ("in_channels", "patch_size", "aug_patch_size", "num_pools", "spacing")


@dataclass
class TrainResult:
    run_dir: Path
    history: list[dict[str, float]]


class Builder:
    """Entry point of the Python API."""

    def __init__(self, config: Config | str | Path | dict[str, Any], *, registry: Registry | None = None,
                 overrides: dict[str, Any] | None = None, **context: Any):
        self.registry = registry or get_registry()
        if isinstance(config, str | Path):
            config = load_config(config, registry=self.registry, overrides=overrides)
        elif isinstance(config, dict):
            from biom3d.core.config import apply_overrides, from_command_line

            try:
                config = validate(apply_overrides(config, overrides or {}), registry=self.registry)
            except ConfigError as exc:
                raise from_command_line(exc, overrides or {}) from None
        elif overrides:
            raise TypeError("overrides apply to a config file or dict, not to a Config object")
        self.config: Config = config
        self.context: RunContext = RunContext.from_config(config, **context)

    # -- components ----------------------------------------------------------------------------------------
    def component(self, slot: str, index: int = 0) -> tuple[Component, Envelope]:
        """The component a config slot selects (``metrics``, ``callbacks``... take an index)."""
        kind, _ = SLOTS[slot]
        env = getattr(self.config, slot)
        if isinstance(env, list):
            env = env[index]
        if env is None:
            raise KeyError(f"the config selects no {slot}")
        return self.registry.resolve(kind, env.name), env

    def build(self, slot: str, index: int | None = None, **context: Any) -> Any:
        """Build what a slot selects; a list slot without ``index`` builds every entry."""
        return self._build_with(self.context.replace(**context) if context else self.context, slot, index)

    def build_component(self, kind: str, name: str, params: dict[str, Any] | None = None, **context: Any) -> Any:
        """Build any registered component by kind and name, outside the config's choices."""
        ctx = self.context.replace(**context) if context else self.context
        return self.registry.resolve(kind, name).build(params or {}, ctx)

    # -- training ------------------------------------------------------------------------------------------
    def train(self, *, runs_dir: str | Path | None = None, run_dir: str | Path | None = None) -> TrainResult:
        """Train in a new run folder ``<runs_dir>/<name>-<timestamp>`` (or the given empty ``run_dir``)."""
        self._check_trainable()
        return self._new_run(runs_dir=runs_dir, run_dir=run_dir)

    @classmethod
    def resume(cls, run_dir: str | Path, *, epochs: int | None = None, registry: Registry | None = None,
               overrides: dict[str, Any] | None = None, strict_versions: bool = False) -> TrainResult:
        """Continue an interrupted run from its last good checkpoint; ``epochs`` extends a finished one. A run
        stopped before its first checkpoint starts again from scratch in the same folder, with its config."""
        from biom3d.core import runs
        from biom3d.core.checkpoints import has_checkpoint, load_latest

        run_dir = Path(run_dir)
        registry = registry or get_registry()
        overrides = dict(overrides or {})
        if epochs is not None:
            overrides["train.epochs"] = epochs
        config = runs.load_run_config(run_dir, registry=registry, overrides=overrides, strict_versions=strict_versions)
        _require_resumable_data(run_dir, config)
        builder = cls(config, registry=registry)
        from biom3d.core import distributed
        from biom3d.core.atomic import atomic_write_text, remove_stale_temporaries

        with builder._session():
            # a kill mid-write leaves its temporary file
            distributed.run_on_main(lambda: remove_stale_temporaries(run_dir))
            state = None
            if has_checkpoint(run_dir / "checkpoints"):
                state, path = load_latest(run_dir / "checkpoints")
                done = int(state["epoch"]) + 1
                if config.train.epochs < done:  # before config.yaml is rewritten: it would say fewer than ran
                    raise InputError(f"{run_dir} has trained {done} epochs already; --epochs {config.train.epochs} "
                                     f"cannot shorten it: give more than {done} to extend it, or train a new run")
                log.info("resuming %s from %s (epoch %d done)", run_dir, path.name, done)
            else:
                builder._check_trainable()
                log.warning("%s was stopped before its first checkpoint: training it from the start, in the same "
                            "folder and with its config.yaml", run_dir)
            if overrides:
                distributed.run_on_main(lambda: atomic_write_text(run_dir / runs.CONFIG, runs.portable_yaml(config)))
            return builder._fit(run_dir, resume=state)

    @classmethod
    def finetune(cls, run_dir: str | Path, config: Config | str | Path | dict[str, Any], *,
                 registry: Registry | None = None, overrides: dict[str, Any] | None = None,
                 runs_dir: str | Path | None = None, new_run_dir: str | Path | None = None,
                 strict_versions: bool = False) -> TrainResult:
        """A new run from ``run_dir``'s trained weights, on the new config's data and schedule, in a new folder
        under ``runs_dir`` (or the given empty ``new_run_dir``, as ``train``'s ``run_dir``). What the network
        needs (model and its params, channels, patch, pooling, spacing) is kept from the old run."""
        from biom3d.core import runs
        from biom3d.core.checkpoints import load_weights

        registry = registry or get_registry()
        old = runs.load_run_config(Path(run_dir), registry=registry, strict_versions=strict_versions)
        builder = cls(config, registry=registry, overrides=overrides)
        kept = {f: getattr(old, f) for f in ARCHITECTURE_FIELDS}
        kept["model"] = old.model
        if "in_channels" in builder.config.model_fields_set and builder.config.in_channels != old.in_channels:
            raise InputError(f"{run_dir} was trained on images of {old.in_channels} channel(s), the new config's data "
                             f"has {builder.config.in_channels} (in_channels): fine-tuning keeps the network's "
                             "input layer, so give images with as many channels, or train a new run")
        changed = {k: (getattr(builder.config, k), v) for k, v in kept.items() if getattr(builder.config, k) != v}
        builder.config = builder.config.model_copy(update=kept)
        builder.context = RunContext.from_config(builder.config)
        log.info("fine-tuning from %s: kept model %s, patch %s, pooling %s, channels %s", run_dir, old.model.name,
                 old.patch_size, old.num_pools, old.in_channels)
        for key, (new, kept_value) in changed.items():
            log.info("  %s: the new config asked for %s, kept %s from the trained run", key,
                     getattr(new, "name", new), getattr(kept_value, "name", kept_value))
        weights = load_weights(Path(run_dir))["model"]
        builder._check_trainable()
        return builder._new_run(runs_dir=runs_dir, run_dir=new_run_dir, init_weights=weights)

    def _new_run(self, *, runs_dir: str | Path | None, run_dir: str | Path | None,
                 init_weights: dict[str, Any] | None = None) -> TrainResult:
        """Train in a new folder (named by rank 0), removed again if training fails before its first checkpoint."""
        from biom3d.core import distributed, runs
        from biom3d.core.checkpoints import has_checkpoint

        with self._session() as world:
            def make_folder() -> tuple[Path, bool]:
                if run_dir is not None and has_checkpoint(Path(run_dir) / "checkpoints"):
                    raise InputError(f"{run_dir} holds a trained run already (checkpoints/): continue it with "
                                     "Builder.resume (`biom3d train --resume`), or give an empty folder")
                folder = Path(run_dir) if run_dir is not None else runs.new_run_dir(
                    Path(runs_dir or self.config.runs_dir), self.config.name)
                created = run_dir is None or not folder.exists() or not any(folder.iterdir())
                folder.mkdir(parents=True, exist_ok=True)
                return folder, created

            folder, created = distributed.run_on_main(make_folder)
            with _discarded_if_no_checkpoint(folder, created and world.is_main):
                distributed.run_on_main(lambda: runs.write_run_files(
                    folder, self.config, self.registry, data_dir=self.context.data_dir, folds=self.context.folds_path))
                return self._fit(folder, init_weights=init_weights)

    def _fit(self, run_dir: Path, *, resume: dict[str, Any] | None = None,
             init_weights: dict[str, Any] | None = None) -> TrainResult:
        from biom3d.core import distributed
        from biom3d.core.devices import seed_everything
        from biom3d.core.protocols import TrainJob

        if resume is None:  # before building: weight initialisation is random too (the same on every rank)
            seed_everything(self.config.train.seed)
        device = distributed.rank_device(self.config.train.device)
        ctx = self.context.replace(run_dir=run_dir, device=str(device))
        _record_ranks(run_dir, self.config, device, resume)

        def build(slot: str, index: int | None = None) -> Any:
            return self._build_with(ctx, slot, index)

        model = build("model")
        if init_weights is not None:
            _load_matching(model, init_weights)
        loss = build("loss")
        _check_deep_supervision(self.config, model, loss)
        metrics = []
        for i, env in enumerate(self.config.metrics):
            comp = self.registry.resolve("metric", env.name)
            metrics.append((comp.name, build("metrics", i), comp.spec.higher_is_better))
        job = TrainJob(model=model, loss=loss, metrics=metrics, data=build("dataset"), callbacks=build("callbacks"),
                       train=self.config.train, run_dir=run_dir, resume=resume)
        history = build("trainer").fit(job)
        return TrainResult(run_dir, history)

    def _build_with(self, ctx: RunContext, slot: str, index: int | None = None) -> Any:
        """Metric-kind components learn from ``ctx.role`` whether they fill the loss or a metrics slot."""
        env = getattr(self.config, slot)
        if isinstance(env, list) and index is None:
            return [self._build_with(ctx, slot, i) for i in range(len(env))]
        comp, env = self.component(slot, index or 0)
        role = SLOTS[slot][1]
        return comp.build(env.params, ctx.replace(role=role) if role else ctx)

    def _session(self) -> contextlib.AbstractContextManager:
        """The job's process group under torchrun (:func:`biom3d.core.distributed.session`), else nothing."""
        from biom3d.core import distributed

        train = self.config.train
        return distributed.session(distributed.rank_device(train.device), train.ddp_timeout)

    def _check_trainable(self) -> None:
        problems = []
        if self.context.data_dir is None:
            problems.append(Problem("data.preprocessed", "not set: run `biom3d preprocess` and train its config.yaml"))
        elif not (self.context.data_dir / "images").is_dir():
            problems.append(Problem("data.preprocessed", f"{self.context.data_dir} holds no preprocessed images/ folder"))
        if self.context.patch_size is None:
            problems.append(Problem("patch_size", "not set: `biom3d preprocess` writes it, or give [D, H, W]"))
        if problems:
            raise ConfigError(problems, source=str(self.config._source or ""))
        _warn_if_patch_exceeds_images(self.context.data_dir / "images", tuple(self.context.patch_size))


@contextlib.contextmanager
def _discarded_if_no_checkpoint(run_dir: Path, created: bool) -> Iterator[None]:
    """A training that fails before its first checkpoint leaves no folder that looks like a run: the folder this
    call created is removed (a folder the user gave is kept, with its config files, for --resume)."""
    try:
        yield
    except BaseException:
        checkpoints = run_dir / "checkpoints"
        if created and not (checkpoints.is_dir() and any(checkpoints.glob("*.pt"))):
            shutil.rmtree(run_dir, ignore_errors=True)
            log.warning("training failed before its first checkpoint: removed the run folder %s", run_dir)
        raise


def _require_resumable_data(run_dir: Path, config: Config) -> None:
    """The data a resume trains on is there and is the run's own (moved, perhaps), before config.yaml is rewritten."""
    from biom3d.core.relocation import recorded_preprocessed, require_preprocessed

    wanted = config.path(config.data.preprocessed)
    preprocessor = config.preprocessor.model_dump(mode="json") if config.preprocessor else {}
    folds = config.path(config.data.folds)
    require_preprocessed(run_dir, recorded_preprocessed(run_dir), str(wanted) if wanted else None, preprocessor, folds)


def _record_ranks(run_dir: Path, config: Config, device: Any, resume: dict[str, Any] | None) -> None:
    """Log every rank's host, device and seed once, and keep them in ``distributed.json`` (one entry per
    training session of the run: a resume with another world size adds its own)."""
    from biom3d.core import distributed
    from biom3d.core.atomic import atomic_write_text

    world = distributed.current()
    ranks = distributed.describe_ranks(world, device, config.train.seed)
    path = run_dir / "distributed.json"

    def write() -> None:
        if not world.distributed and not path.is_file():
            return  # a one-process run that never was distributed
        for r in ranks:
            log.info("rank %d of %d: %s on %s, seed %s", r["rank"], world.size, r["device"], r["host"], r["seed"])
        batch = config.train.batch_size
        entry = {"world_size": world.size, "from_epoch": int(resume["epoch"]) + 1 if resume else 0,
                 "global_batch": batch, "batch_per_rank": batch // world.size, "lr": config.train.lr,
                 "lr_rule": "unchanged with the world size: DDP averages the gradients over the global batch",
                 "seed_rule": f"rank seed = train.seed + {distributed.SEED_STRIDE} x rank", "ranks": ranks}
        sessions = json.loads(path.read_text(encoding="utf-8")).get("sessions", []) if path.is_file() else []
        atomic_write_text(path, json.dumps({"sessions": [*sessions, entry]}, indent=2))

    distributed.run_on_main(write)


def _warn_if_patch_exceeds_images(images: Path, patch: tuple[int, ...]) -> None:
    """A patch larger than every image along an axis is zero-padded there: a warning when padding is most of each
    patch, a note when it is a small share (the paper's auto-configuration rounds patches up: the demo's 60-slice
    quadrants get 64, 6% padding, which a warning that "training sees mostly padding" misstated)."""
    import math

    import numpy as np

    largest = None
    for path in images.glob("**/*.npy"):
        try:
            spatial = np.load(path, mmap_mode="r").shape[-3:]  # the header only: nothing is read
        except (OSError, ValueError):
            continue  # the dataset reports unreadable files
        if len(spatial) != len(patch):
            continue
        largest = spatial if largest is None else tuple(max(a, b) for a, b in zip(largest, spatial, strict=True))
    if largest is None:
        return
    over = [f"{axis} ({p} > {n})" for axis, p, n in zip("DHW", patch, largest, strict=True) if p > n]
    if not over:
        return
    padding = 1 - math.prod(min(p, n) / p for p, n in zip(patch, largest, strict=True))
    said = (f"patch_size {list(patch)} is larger than every preprocessed image along {', '.join(over)} (largest "
            f"image {list(largest)} in {images}): patches are zero-padded there, {padding:.0%} of their voxels")
    if padding >= 0.5:
        log.warning("%s, so training sees mostly padding; set patch_size to at most %s (`biom3d preprocess` chooses "
                    "one that fits)", said, [min(p, n) for p, n in zip(patch, largest, strict=True)])
    else:
        log.info("note: %s", said)


def _check_deep_supervision(config: Config, model: Any, loss: Any) -> None:
    if getattr(model, "deep_supervision", False) and not getattr(loss, "deep_supervision", False):
        raise ConfigError([Problem("loss", f"the model {config.model.name} outputs deep-supervision heads but the loss "
                                   f"{config.loss.name} takes one output; use loss: {{name: deep-supervision, params: "
                                   f"{{loss: {{name: {config.loss.name}}}}}}} or set model.params.deep_supervision: false")])


def _load_matching(model: Any, weights: dict[str, Any]) -> None:
    """Load every tensor whose name and shape match; report the rest (e.g. a new number of classes)."""
    own = model.state_dict()
    usable = {k: v for k, v in weights.items() if k in own and own[k].shape == v.shape}
    skipped = sorted(set(weights) - set(usable))
    model.load_state_dict(usable, strict=False)
    log.info("loaded %d of %d trained tensors%s", len(usable), len(own),
             f"; re-initialised {len(skipped)} that changed shape ({', '.join(skipped[:4])}...)" if skipped else "")

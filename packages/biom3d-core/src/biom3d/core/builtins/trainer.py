"""The default trainer (``core/seg-trainer``): SGD with Nesterov momentum by default, gradient clipping,
mixed precision on CUDA, validation every N epochs, and callbacks at six points.

Everything that is not the optimisation step itself (LR schedule, checkpoints, logs, curves, snapshots,
early stopping) is a callback chosen in the config, so the loop stays short and replaceable.

Under torchrun (:mod:`biom3d.core.distributed`) the model is wrapped in DistributedDataParallel: the config's
batch size is the global batch, split over the ranks, with the learning rate unchanged (DDP averages the
gradients, so a step is the one-process step on the whole batch); each rank draws its patches with its own
seed; losses and metrics are averaged over the ranks, so every rank logs (and callbacks decide on) the same
numbers; callbacks run on every rank and write on rank 0 only.
"""

from __future__ import annotations

import logging
import random
import time
from typing import Any

import numpy as np
import torch

from biom3d.core import distributed
from biom3d.core.devices import keep_freed_memory, resolve_device, seed_everything  # noqa: F401 (benchmarks)
from biom3d.core.protocols import TrainJob

log = logging.getLogger("biom3d")
#: a resumed run's loader seed: ``seed * RESUME_STRIDE + start epoch`` (apart from every rank's and epoch's)
RESUME_STRIDE = 1_000_003


def build_trainer(params, ctx) -> SegTrainer:
    return SegTrainer(params, ctx)


class SegTrainer:
    """Holds the training state callbacks read and write."""

    def __init__(self, params, ctx):
        self.params = params
        self.ctx = ctx
        self.stop_training = False
        self.history: list[dict[str, float]] = []
        self.epoch = -1
        self.last_val_sample: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self._rank_rngs: list[dict[str, Any]] = []  # under DDP: every rank's RNG state at the last epoch end

    # -- public --------------------------------------------------------------------------------------------
    def fit(self, job: TrainJob) -> list[dict[str, float]]:
        cfg = job.train
        self.job, self.train_cfg, self.run_dir = job, cfg, job.run_dir
        self.epochs = cfg.epochs
        self.world = distributed.current()
        self.device = distributed.rank_device(cfg.device, self.world)
        self.batch_size = distributed.local_batch(cfg.batch_size, self.world)
        self.model = job.model.to(self.device)
        self.loss = job.loss.to(self.device) if isinstance(job.loss, torch.nn.Module) else job.loss
        self.optimizer = make_optimizer(self.model.parameters(), cfg)
        self.amp = cfg.fp16 and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.monitor, self.monitor_higher = self._monitor(job)
        start = 0
        if job.resume is not None:
            start = self.load_state(job.resume) + 1
        else:
            seed_everything(distributed.rank_seed(cfg.seed, self.world.rank))
        if start >= self.epochs:
            log.info("the run already finished its %d epochs; pass more --epochs to extend it", self.epochs)
            return self.history
        if self.world.distributed:
            log.info("distributed: global batch %d = %d ranks x %d; learning rate %g unchanged (DDP averages the "
                     "gradients over the global batch, as one process with batch %d would)", cfg.batch_size,
                     self.world.size, self.batch_size, cfg.lr, cfg.batch_size)
        self.model = distributed.wrap(self.model, self.device)  # after loading: every rank starts from the same weights
        self.forward = self.model  # what a training step calls: the model, or its torch.compile'd form
        if cfg.compile:
            from biom3d.core.compiling import compiled

            self.forward = compiled(self.model)
        train_loader = self._loader(job.data.train_dataset(cfg.iters_per_epoch * cfg.batch_size), shuffle=False,
                                    start_epoch=start)
        val_loader = None
        if cfg.val_iters > 0:
            val_loader = self._loader(job.data.val_dataset(cfg.val_iters * cfg.batch_size), shuffle=False, seed_offset=1)
        try:
            self._epochs(start, train_loader, val_loader)
        except Exception as exc:
            if self.world.distributed and distributed.is_collective_failure(exc):
                raise distributed.lost_ranks(exc, cfg.ddp_timeout, self.run_dir) from exc
            raise
        return self.history

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue: weights (of the network DDP wraps), optimizer, scaler, epoch, history,
        RNG and callback states; under DDP also the world size and every rank's RNG state (gathered at the end
        of each epoch, so that this is no collective and one rank may call it alone)."""
        world = getattr(self, "world", None)
        ranks = {"world_size": world.size, "rng_ranks": self._rank_rngs} if world and world.distributed else {}
        return {
            "model": distributed.unwrap(self.model).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch,
            "history": [dict(h) for h in self.history],
            "rng": rng_state(),
            "callbacks": {f"{i}:{type(cb).__name__}": cb.state_dict() for i, cb in enumerate(self.job.callbacks)},
            **ranks,
            **self.job.extra_state,
        }

    def load_state(self, state: dict[str, Any]) -> int:
        distributed.unwrap(self.model).load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.history = [dict(h) for h in state.get("history", [])]
        for i, cb in enumerate(self.job.callbacks):
            saved = state.get("callbacks", {}).get(f"{i}:{type(cb).__name__}")
            if saved:
                cb.load_state_dict(saved)
        self.epoch = int(state["epoch"])
        self._restore_rng(state)
        return self.epoch

    # -- loop ----------------------------------------------------------------------------------------------
    def _epochs(self, start: int, train_loader, val_loader) -> None:
        cfg = self.train_cfg
        self._call("on_train_begin")
        for epoch in range(start, self.epochs):
            self.epoch = epoch
            self._call("on_epoch_begin", epoch)
            logs = {"epoch": epoch, "lr": self.optimizer.param_groups[0]["lr"]}
            start_time = time.perf_counter()
            logs["train_loss"] = self._train_epoch(train_loader)
            if val_loader is not None and (epoch + 1) % cfg.val_every == 0:
                logs.update(self._validate(val_loader))
            logs["time"] = time.perf_counter() - start_time
            if self.world.distributed:
                self._rank_rngs = distributed.gather(rng_state())  # each rank's, for checkpoints
            self.history.append(logs)
            self._call("on_epoch_end", epoch, logs)
            if self.stop_training:
                log.info("stopping after epoch %d (requested by a callback)", epoch)
                break
        self._call("on_train_end")

    def _train_epoch(self, loader) -> float:
        """Mean training loss of the epoch, over every rank's batches."""
        self.model.train()
        total, count = torch.zeros((), device=self.device), 0
        clip = self.train_cfg.grad_clip
        on_device = getattr(self.job.data, "on_device", None)  # batched augmentation on the device, if the data has it
        for step, batch in enumerate(loader):
            if step == 0 and self.device.type == "cpu":
                keep_freed_memory()  # after the loader's workers started: a dataset's workers tune their own
            self._call("on_batch_begin", step)
            if on_device is not None:  # the whole batch goes: its dataset's collate may have made more keys
                moved = {k: v.to(self.device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
                with torch.no_grad():
                    batch = on_device(moved)
            image = batch["image"].to(self.device, non_blocking=True)
            target = batch["mask"].to(self.device, non_blocking=True)
            try:
                detached = self._step(image, target, clip)
            except Exception as exc:
                from biom3d.core.compiling import fallback_message, is_compile_failure

                if self.forward is self.model or not is_compile_failure(exc):
                    raise
                log.warning(fallback_message(exc))
                self.forward = self.model  # the same step again, eagerly: no optimizer step was taken
                detached = self._step(image, target, clip)
            total += detached
            count += 1
            self._call("on_batch_end", step, {"loss": detached, "batch_size": image.shape[0]})
        return distributed.mean_over_ranks({"train_loss": (total, count)}, "train")["train_loss"]

    def _step(self, image: torch.Tensor, target: torch.Tensor, clip: float | None) -> torch.Tensor:
        """One optimisation step; its loss, detached."""
        with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.amp):
            output = self.forward(image)
            loss = self.loss(output, target)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if clip:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return loss.detach()

    @torch.inference_mode()
    def _validate(self, loader) -> dict[str, float]:
        """Validation loss and metrics over every rank's patches (each rank scores its share; the means are
        weighted by how many parts each rank scored)."""
        network = distributed.unwrap(self.model)  # no DDP forward: nothing to synchronise in evaluation
        network.eval()
        losses, per_class = [], {name: [] for name, _, _ in self.job.metrics}
        sample, sample_fg = None, -1.0
        for batch in loader:
            image = batch["image"].to(self.device)
            target = batch["mask"].to(self.device)
            valid = batch.get("valid")
            with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.amp):
                output = network(image)
                parts = image_parts(output, target, None if valid is None else valid.to(self.device))
                losses.extend(float(self.loss(out, tgt)) for out, tgt in parts)
            output = output.float()
            for out, tgt in parts:
                for name, metric, _ in self.job.metrics:
                    per_class[name].append(metric.per_class(out.float(), tgt).float().cpu())
            fg = float((target[0] > 0).float().mean())
            if fg > sample_fg:  # keep the validation patch with the most foreground for snapshots
                sample, sample_fg = (image[0].cpu().numpy(), target[0].cpu().numpy(),
                                     self._discretize(output[0]).cpu().numpy()), fg
        self.last_val_sample = sample
        sums = {"val_loss": (float(np.sum(losses)), len(losses))}
        for name, values in per_class.items():
            stacked = torch.stack(values) if values else torch.zeros(0, self.ctx.num_classes)
            sums[name] = (stacked.sum(0), len(values))
        means = distributed.mean_over_ranks(sums, "val")
        logs = {"val_loss": means["val_loss"]}
        metric_by_name = {name: metric for name, metric, _ in self.job.metrics}
        for name in per_class:
            scores = means[name].float()
            logs[f"val_{name}"] = float(scores.mean())
            labels = getattr(metric_by_name[name], "class_labels", None)
            labels = labels(len(scores)) if callable(labels) else labels
            for i, v in enumerate(scores.tolist()):
                label = labels[i] if labels else i + 1  # foreground classes are 1..K, as in `biom3d eval`
                logs[f"val_{name}_{label}"] = float(v)
        return logs

    # -- helpers -------------------------------------------------------------------------------------------
    def _discretize(self, logits: torch.Tensor) -> torch.Tensor:
        if self.ctx.multilabel:
            return (logits.sigmoid() > 0.5).to(torch.uint8)
        return logits.argmax(0).to(torch.uint8)

    def _loader(self, dataset, *, shuffle: bool, seed_offset: int = 0, start_epoch: int = 0):
        """A loader of this rank's batches: its share of ``dataset`` (:func:`distributed.rank_indices`), drawn
        with its own seed (workers are seeded from it).

        ``start_epoch``: where a resumed run starts. Its persistent workers' RNG states are not in any checkpoint,
        so a resumed loader is seeded anew from the epoch: seeded as a fresh run's, it replayed the first epochs'
        crops. (The main process's RNG is restored exactly; ``on_device`` augmentation drawing from it continues
        the interrupted run's sequence.)"""
        cfg = self.train_cfg
        collate = getattr(dataset, "collate", None)  # the dataset's own batching, if it has one (protocols)
        generator = torch.Generator()
        if cfg.seed is None:  # unseeded: the OS's entropy (a generator's default seed is one fixed number)
            generator.seed()
        else:
            seed = distributed.rank_seed(cfg.seed, self.world.rank) + seed_offset
            generator.manual_seed(seed if start_epoch == 0 else (seed * RESUME_STRIDE + start_epoch) % 2**63)
        if self.world.distributed:
            dataset = torch.utils.data.Subset(dataset, distributed.rank_indices(len(dataset), cfg.batch_size,
                                                                                self.world))
        return torch.utils.data.DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=cfg.workers,
            pin_memory=self.device.type == "cuda",
            drop_last=False,
            persistent_workers=cfg.workers > 0,
            generator=generator,
            worker_init_fn=_seed_worker,
            collate_fn=collate,
        )

    def _monitor(self, job: TrainJob) -> tuple[str, bool]:
        if job.train.val_iters > 0 and job.metrics and self.params.monitor == "metric":
            name, _, higher = job.metrics[0]
            return f"val_{name}", higher
        return ("val_loss", False) if job.train.val_iters > 0 else ("train_loss", False)

    def _call(self, hook: str, *args) -> None:
        for cb in self.job.callbacks:
            getattr(cb, hook)(self, *args)

    def _restore_rng(self, state: dict[str, Any]) -> None:
        """This rank's RNG state as saved; a rank the saved run did not have (resumed with more ranks) draws
        from its own seed, moved on by the epochs done."""
        ranks = state.get("rng_ranks") or [state["rng"]]
        saved = int(state.get("world_size", 1))
        if saved != self.world.size:
            log.info("note: this run was trained with %d rank(s) and resumes with %d: the global batch stays %d "
                     "(%d per rank now) and the learning rate is unchanged", saved, self.world.size,
                     self.train_cfg.batch_size, self.batch_size)
        if self.world.rank < len(ranks):
            set_rng_state(ranks[self.world.rank])
        else:
            seed = distributed.rank_seed(self.train_cfg.seed, self.world.rank)
            seed_everything(None if seed is None else seed + self.epoch + 1)


def image_parts(output: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """What validation scores: the whole batch, or, when a dataset marks padding (``valid`` 0 where a patch
    left its volume), each item cut to the box of its image, so that padding never counts. (Padding of a thin
    validation slab once made up most of a patch; the network's marks there sank the validation Dice while the
    test Dice rose, and ``best.pt`` came from the wrong epoch.)"""
    if valid is None or bool(valid.all()):
        return [(output, target)]
    if valid.ndim == output.ndim - 1:
        valid = valid[:, None]
    parts = []
    for i in range(output.shape[0]):
        inside = valid[i, 0].nonzero()
        if not len(inside):
            continue
        box = tuple(slice(int(lo), int(hi) + 1) for lo, hi in zip(inside.min(0).values, inside.max(0).values, strict=True))
        item = (slice(i, i + 1),)
        parts.append((output[item + (slice(None),) + box],
                      target[item + (slice(None),) * (target.ndim - output.ndim + 1) + box]))
    return parts


def make_optimizer(parameters, cfg) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(parameters, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0,
                               weight_decay=cfg.weight_decay)
    cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return cls(parameters, lr=cfg.lr, weight_decay=cfg.weight_decay)


def _seed_worker(worker_id: int) -> None:
    seed = torch.initial_seed() % 2**32  # set per worker by the DataLoader from its seeded generator
    random.seed(seed)
    np.random.seed(seed)


def rng_state() -> dict[str, Any]:
    """RNG states in types ``torch.load(weights_only=True)`` accepts."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])

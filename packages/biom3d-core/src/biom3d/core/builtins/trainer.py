"""The default trainer (``core/seg-trainer``): SGD with Nesterov momentum by default, gradient clipping,
mixed precision on CUDA, validation every N epochs, and callbacks at six points.

Everything that is not the optimisation step itself (LR schedule, checkpoints, logs, curves, snapshots,
early stopping) is a callback chosen in the config, so the loop stays short and replaceable.
"""

from __future__ import annotations

import logging
import random
import time
from typing import Any

import numpy as np
import torch

from biom3d.core.devices import keep_freed_memory, resolve_device, seed_everything
from biom3d.core.protocols import TrainJob

log = logging.getLogger("biom3d")


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

    # -- public --------------------------------------------------------------------------------------------
    def fit(self, job: TrainJob) -> list[dict[str, float]]:
        cfg = job.train
        self.job, self.train_cfg, self.run_dir = job, cfg, job.run_dir
        self.epochs = cfg.epochs
        self.device = resolve_device(cfg.device)
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
            seed_everything(cfg.seed)
        if start >= self.epochs:
            log.info("the run already finished its %d epochs; pass more --epochs to extend it", self.epochs)
            return self.history
        train_loader = self._loader(job.data.train_dataset(cfg.iters_per_epoch * cfg.batch_size), shuffle=False)
        val_loader = None
        if cfg.val_iters > 0:
            val_loader = self._loader(job.data.val_dataset(cfg.val_iters * cfg.batch_size), shuffle=False, seed_offset=1)
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
            self.history.append(logs)
            self._call("on_epoch_end", epoch, logs)
            if self.stop_training:
                log.info("stopping after epoch %d (requested by a callback)", epoch)
                break
        self._call("on_train_end")
        return self.history

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue: weights, optimizer, scaler, epoch, history, RNG and callback states."""
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch,
            "history": [dict(h) for h in self.history],
            "rng": rng_state(),
            "callbacks": {f"{i}:{type(cb).__name__}": cb.state_dict() for i, cb in enumerate(self.job.callbacks)},
            **self.job.extra_state,
        }

    def load_state(self, state: dict[str, Any]) -> int:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.history = [dict(h) for h in state.get("history", [])]
        for i, cb in enumerate(self.job.callbacks):
            saved = state.get("callbacks", {}).get(f"{i}:{type(cb).__name__}")
            if saved:
                cb.load_state_dict(saved)
        set_rng_state(state["rng"])
        self.epoch = int(state["epoch"])
        return self.epoch

    # -- loop ----------------------------------------------------------------------------------------------
    def _train_epoch(self, loader) -> float:
        self.model.train()
        total, count = torch.zeros((), device=self.device), 0
        clip = self.train_cfg.grad_clip
        for step, batch in enumerate(loader):
            if step == 0 and self.device.type == "cpu":
                keep_freed_memory()  # after the loader's workers started, so that they keep glibc's defaults
            self._call("on_batch_begin", step)
            image = batch["image"].to(self.device, non_blocking=True)
            target = batch["mask"].to(self.device, non_blocking=True)
            with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.amp):
                output = self.model(image)
                loss = self.loss(output, target)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            if clip:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            detached = loss.detach()
            total += detached
            count += 1
            self._call("on_batch_end", step, {"loss": detached, "batch_size": image.shape[0]})
        return float(total) / max(count, 1)

    @torch.inference_mode()
    def _validate(self, loader) -> dict[str, float]:
        self.model.eval()
        losses, per_class = [], {name: [] for name, _, _ in self.job.metrics}
        sample, sample_fg = None, -1.0
        for batch in loader:
            image = batch["image"].to(self.device)
            target = batch["mask"].to(self.device)
            valid = batch.get("valid")
            with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.amp):
                output = self.model(image)
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
        logs = {"val_loss": float(np.mean(losses))}
        metric_by_name = {name: metric for name, metric, _ in self.job.metrics}
        for name, values in per_class.items():
            scores = torch.stack(values).mean(0)
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

    def _loader(self, dataset, *, shuffle: bool, seed_offset: int = 0):
        cfg = self.train_cfg
        generator = torch.Generator()
        generator.manual_seed((cfg.seed or 0) + seed_offset)
        return torch.utils.data.DataLoader(
            dataset,
            batch_size=cfg.batch_size,
            shuffle=shuffle,
            num_workers=cfg.workers,
            pin_memory=self.device.type == "cuda",
            drop_last=False,
            persistent_workers=cfg.workers > 0,
            generator=generator,
            worker_init_fn=_seed_worker,
        )

    def _monitor(self, job: TrainJob) -> tuple[str, bool]:
        if job.train.val_iters > 0 and job.metrics:
            name, _, higher = job.metrics[0]
            return f"val_{name}", higher
        return ("val_loss", False) if job.train.val_iters > 0 else ("train_loss", False)

    def _call(self, hook: str, *args) -> None:
        for cb in self.job.callbacks:
            getattr(cb, hook)(self, *args)


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

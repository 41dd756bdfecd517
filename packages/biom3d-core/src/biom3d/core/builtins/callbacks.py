"""The default callbacks: LR schedule, checkpoints, CSV log, console progress, curves, validation snapshots,
early stopping. Each is a component selected in the config's ``callbacks`` list.

Every file they write is written atomically, and each removes at train begin the temporaries a killed run
left of its own files, so a restarted or resumed run folder holds no stray ``.tmp`` file.

Under torchrun every callback runs on every rank (the trainer hands them the same, all-reduced numbers, so an
LR schedule or early stopping decides alike everywhere), and those that write do so on rank 0 only; the
others wait while rank 0 writes a checkpoint.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import time
from pathlib import Path
from typing import Any

from biom3d.core.atomic import atomic_copy, atomic_path, atomic_write_text, remove_stale_temporaries
from biom3d.core.distributed import is_main, run_on_main
from biom3d.core.protocols import Callback

log = logging.getLogger("biom3d")


# -- factories (targets) -------------------------------------------------------------------------------------
def build_lr_schedule(params, ctx):
    return LRSchedule(params)


def build_checkpoint(params, ctx):
    return Checkpoint(params, ctx.run_dir)


def build_csv_log(params, ctx):
    return CSVLog(ctx.run_dir / "log.csv")


def build_progress(params, ctx):
    return Progress(params)


def build_curves(params, ctx):
    return Curves(ctx.run_dir / "curves.png")


def build_snapshots(params, ctx):
    return Snapshots(params, ctx.run_dir / "snapshots")


def build_early_stopping(params, ctx):
    return EarlyStopping(params)


# -- callbacks -----------------------------------------------------------------------------------------------
class LRSchedule(Callback):
    """Sets the learning rate at each epoch start from ``train.scheduler`` (cosine, poly or constant),
    with an optional linear warm-up. A pure function of the epoch, so resuming needs no state."""

    def __init__(self, params):
        self.params = params

    def on_epoch_begin(self, trainer, epoch: int) -> None:
        lr = self.lr_at(epoch, trainer.epochs, trainer.train_cfg.lr, trainer.train_cfg.scheduler)
        for group in trainer.optimizer.param_groups:
            group["lr"] = lr

    def lr_at(self, epoch: int, epochs: int, base: float, kind: str) -> float:
        warmup, floor = self.params.warmup_epochs, self.params.min_lr
        if epoch < warmup:
            return base * (epoch + 1) / (warmup + 1)
        progress = (epoch - warmup) / max(1, epochs - warmup)
        if kind == "cosine":
            return floor + 0.5 * (base - floor) * (1 + math.cos(math.pi * progress))
        if kind == "poly":
            return floor + (base - floor) * (1 - progress) ** self.params.poly_exponent
        return base


class Checkpoint(Callback):
    """Writes ``checkpoints/last.pt`` every ``every`` epochs (and at the end) and ``best.pt`` when the
    monitored value improves."""

    def __init__(self, params, run_dir: Path):
        self.params = params
        self.folder = Path(run_dir) / "checkpoints"
        self.best: float | None = None

    def on_train_begin(self, trainer) -> None:
        if is_main():
            remove_stale_temporaries(self.folder)

    def on_epoch_end(self, trainer, epoch: int, logs: dict[str, float]) -> None:
        value = logs.get(trainer.monitor)
        improved = value is not None and not math.isnan(value) and (
            self.best is None or (value > self.best if trainer.monitor_higher else value < self.best))
        if improved:
            self.best = value
        best = improved and self.params.save_best
        last = (epoch + 1) % self.params.every == 0 or epoch + 1 >= trainer.epochs or trainer.stop_training
        if best or last:  # the same decision on every rank: the logs are all-reduced
            run_on_main(lambda: self._save(trainer, best=best, last=last))

    def _save(self, trainer, *, best: bool, last: bool) -> None:
        from biom3d.core.checkpoints import BEST, LAST, save_checkpoint

        state = trainer.state_dict()
        if best:
            save_checkpoint(self.folder / BEST, state)
        if last:
            save_checkpoint(self.folder / LAST, state, keep_previous=True)

    def on_train_end(self, trainer) -> None:
        from biom3d.core.checkpoints import BEST, LAST

        def copy_last() -> None:
            if not (self.folder / BEST).exists() and (self.folder / LAST).exists():
                atomic_copy(self.folder / LAST, self.folder / BEST)

        run_on_main(copy_last)

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = state.get("best")


class CSVLog(Callback):
    """``log.csv``: one row per epoch; rewritten atomically so a kill never leaves a torn line."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def on_train_begin(self, trainer) -> None:
        if is_main():
            remove_stale_temporaries(self.path.parent, names=[self.path.name], recursive=False)

    def on_epoch_end(self, trainer, epoch: int, logs: dict[str, float]) -> None:
        if not is_main():
            return
        rows = trainer.history
        columns = ["epoch", "lr", "train_loss", "val_loss"]
        columns += sorted({k for row in rows for k in row} - set(columns) - {"time"}) + ["time"]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n", restval="")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _fmt(v) for k, v in row.items()})
        atomic_write_text(self.path, buf.getvalue())


class Progress(Callback):
    """A progress bar per epoch (loss, patches/s) and one summary line per epoch."""

    def __init__(self, params):
        self.params = params
        self.bar = None

    def on_train_begin(self, trainer) -> None:
        from biom3d.core.distributed import unwrap

        log.info("training %s on %s: %d epochs x %d iterations, batch %d, run folder %s",
                 type(unwrap(trainer.model)).__name__, trainer.device, trainer.epochs,
                 trainer.train_cfg.iters_per_epoch, trainer.train_cfg.batch_size, trainer.run_dir)

    def on_epoch_begin(self, trainer, epoch: int) -> None:
        from tqdm.auto import tqdm

        self.seen, self.start = 0, time.perf_counter()
        self.bar = tqdm(total=trainer.train_cfg.iters_per_epoch, desc=f"epoch {epoch + 1}/{trainer.epochs}",
                        leave=False, disable=not self.params.bar or not is_main(), dynamic_ncols=True, unit="it")

    def on_batch_end(self, trainer, step: int, logs: dict[str, Any]) -> None:
        self.seen += int(logs.get("batch_size", 0))
        if self.bar is not None and not self.bar.disable:
            if step % self.params.refresh_every == 0:
                rate = self.seen / max(time.perf_counter() - self.start, 1e-9)
                self.bar.set_postfix(loss=f"{float(logs['loss']):.4f}", patches_s=f"{rate:.1f}")
            self.bar.update()

    def on_epoch_end(self, trainer, epoch: int, logs: dict[str, float]) -> None:
        if self.bar is not None:
            self.bar.close()
        parts = [f"epoch {epoch + 1}/{trainer.epochs}", f"loss {logs['train_loss']:.4f}"]
        parts += [f"{k} {v:.4f}" for k, v in logs.items() if k.startswith("val_") and k.count("_") == 1]
        parts += [f"lr {logs['lr']:.2e}", f"{logs['time']:.1f}s"]
        log.info("  ".join(parts))


class Curves(Callback):
    """``curves.png``: losses and validation metrics per epoch, redrawn each epoch."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def on_train_begin(self, trainer) -> None:
        if is_main():
            remove_stale_temporaries(self.path.parent, names=[self.path.name], recursive=False)

    def on_epoch_end(self, trainer, epoch: int, logs: dict[str, float]) -> None:
        if not is_main():
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        rows = trainer.history
        fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(10, 4))
        for key in ("train_loss", "val_loss"):
            points = [(r["epoch"] + 1, r[key]) for r in rows if key in r]
            if points:
                ax_loss.plot(*zip(*points, strict=True), label=key, marker="." if len(points) < 30 else None)
        metrics = sorted({k for r in rows for k in r if k.startswith("val_") and k != "val_loss" and k.count("_") == 1})
        for key in metrics:
            points = [(r["epoch"] + 1, r[key]) for r in rows if key in r]
            ax_metric.plot(*zip(*points, strict=True), label=key, marker="." if len(points) < 30 else None)
        for ax, title in ((ax_loss, "loss"), (ax_metric, "validation metrics")):
            ax.set_title(title)
            ax.set_xlabel("epoch")
            if ax.lines:
                ax.legend()
        fig.tight_layout()
        with atomic_path(self.path, suffix=".png") as tmp:
            fig.savefig(tmp, format="png", dpi=90)
        plt.close(fig)


class Snapshots(Callback):
    """``snapshots/epoch-NNNN.png``: a validation slice with its image, truth and prediction overlays."""

    def __init__(self, params, folder: Path):
        self.params = params
        self.folder = Path(folder)

    def on_train_begin(self, trainer) -> None:
        if is_main():
            remove_stale_temporaries(self.folder)

    def on_epoch_end(self, trainer, epoch: int, logs: dict[str, float]) -> None:
        sample = trainer.last_val_sample
        if sample is None or (epoch + 1) % self.params.every or not is_main():
            return
        save_overlay(self.folder / f"epoch-{epoch + 1:04d}.png", *sample, title=f"epoch {epoch + 1}")


class EarlyStopping(Callback):
    """Stops when the monitored value has not improved by ``min_delta`` for ``patience`` validations."""

    def __init__(self, params):
        self.params = params
        self.best: float | None = None
        self.wait = 0

    def on_epoch_end(self, trainer, epoch: int, logs: dict[str, float]) -> None:
        value = logs.get(trainer.monitor)
        if value is None:
            return
        delta = (value - self.best) if self.best is not None else math.inf
        better = delta > self.params.min_delta if trainer.monitor_higher else -delta > self.params.min_delta
        if self.best is None or better:
            self.best, self.wait = value, 0
            return
        self.wait += 1
        if self.wait >= self.params.patience:
            log.info("early stopping: %s has not improved for %d validations", trainer.monitor, self.wait)
            trainer.stop_training = True

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "wait": self.wait}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.wait = state.get("best"), state.get("wait", 0)


def save_overlay(path: Path, image, truth, prediction, *, title: str = "") -> None:
    """Middle foreground slice: image, image + truth, image + prediction."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    img = image[0] if image.ndim == 4 else image
    tru = truth.argmax(0) + (truth.max(0) > 0) if truth.ndim == 4 else truth
    pre = prediction.argmax(0) + (prediction.max(0) > 0) if prediction.ndim == 4 else prediction
    area = (tru > 0).reshape(tru.shape[0], -1).sum(1)
    z = int(np.argmax(area)) if area.any() else tru.shape[0] // 2
    fig, axes = plt.subplots(1, 3, figsize=(9, 3.3))
    for ax, overlay, name in zip(axes, (None, tru, pre), ("image", "truth", "prediction"), strict=True):
        ax.imshow(img[z], cmap="gray")
        if overlay is not None:
            ax.imshow(np.ma.masked_where(overlay[z] == 0, overlay[z]), cmap="autumn", alpha=0.5, vmin=0)
        ax.set_title(name)
        ax.axis("off")
    fig.suptitle(f"{title} (slice {z})")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(Path(path), suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    plt.close(fig)


def _fmt(value: Any) -> Any:
    return f"{value:.6g}" if isinstance(value, float) else value

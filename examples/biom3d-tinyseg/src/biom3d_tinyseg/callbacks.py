"""A callback (:class:`biom3d.core.protocols.Callback`, subclassed: the hooks not overridden do nothing).

``trainer`` is a :class:`biom3d.core.protocols.TrainerState`; epochs and steps are counted from 0 here (the
console shows ``epoch + 1``).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from biom3d.core.protocols import Callback, TrainerState


def build_epoch_log(params, ctx) -> EpochLog:
    return EpochLog(params.filename, params.every)


class EpochLog(Callback):
    """Appends one JSON line per epoch to ``<run_dir>/<filename>``."""

    def __init__(self, filename: str, every: int):
        self.filename, self.every = filename, every
        self.path: Path | None = None
        self.batches = 0
        self.lines = 0  # saved in checkpoints: a resumed run keeps counting

    def on_train_begin(self, trainer: TrainerState) -> None:
        self.path = Path(trainer.run_dir) / self.filename

    def on_epoch_begin(self, trainer: TrainerState, epoch: int) -> None:
        self.batches = 0

    def on_batch_end(self, trainer: TrainerState, step: int, logs: dict[str, Any]) -> None:
        if not math.isfinite(float(logs["loss"])):  # logs["loss"]: a detached 0-d tensor
            trainer.stop_training = True  # stops after this epoch
        self.batches += 1

    def on_epoch_end(self, trainer: TrainerState, epoch: int, logs: dict[str, float]) -> None:
        if (epoch + 1) % self.every:
            return
        line = {**{k: float(v) for k, v in logs.items()}, "epoch": epoch, "shown_as": f"{epoch + 1}/{trainer.epochs}",
                "batches": self.batches, "monitor": trainer.monitor}
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(line) + "\n")
        self.lines += 1

    def on_train_end(self, trainer: TrainerState) -> None:
        logging.getLogger("biom3d").info("epoch-log: %d line(s) in %s", self.lines, self.path)

    def state_dict(self) -> dict[str, Any]:
        return {"lines": self.lines}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.lines = int(state.get("lines", 0))

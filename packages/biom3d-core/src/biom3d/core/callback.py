"""The callback base class: six hook points around training. Light (no torch) so plugins can subclass it
in modules that discovery never imports anyway."""

from __future__ import annotations

from typing import Any


class Callback:
    """Override the hooks you need. ``trainer`` exposes model, optimizer, epoch, epochs, history, run_dir,
    ``stop_training`` (set it to stop after this epoch) and ``last_val_sample`` (image, truth, prediction)."""

    def on_train_begin(self, trainer: Any) -> None: ...

    def on_train_end(self, trainer: Any) -> None: ...

    def on_epoch_begin(self, trainer: Any, epoch: int) -> None: ...

    def on_epoch_end(self, trainer: Any, epoch: int, logs: dict[str, float]) -> None: ...

    def on_batch_begin(self, trainer: Any, step: int) -> None: ...

    def on_batch_end(self, trainer: Any, step: int, logs: dict[str, float]) -> None: ...

    def state_dict(self) -> dict[str, Any]:
        """State saved in checkpoints so a resumed run continues where it stopped (e.g. early stopping)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

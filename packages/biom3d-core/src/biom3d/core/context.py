"""The typed run context handed to every factory: the values several modules share, written once."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any


@dataclass(frozen=True, kw_only=True)
class RunContext:
    """Shared values of a run. A module's own params may override any of them."""

    num_classes: int = 1
    in_channels: int = 1
    multilabel: bool = False
    patch_size: tuple[int, ...] | None = None
    aug_patch_size: tuple[int, ...] | None = None
    num_pools: tuple[int, ...] | None = None
    batch_size: int = 2
    spacing: tuple[float, ...] | None = None
    device: str = "cpu"
    seed: int | None = None
    fold: int = 0
    workers: int = 0
    run_dir: Path | None = None
    config_dir: Path | None = None
    data_dir: Path | None = None
    folds_path: Path | None = None
    fingerprint: Mapping[str, Any] = field(default_factory=dict)
    role: str | None = None  # "loss" or "metric": the slot a metric-kind component is built for

    @property
    def out_channels(self) -> int:
        """Channels of a segmentation network: one per class, plus background under softmax."""
        return self.num_classes if self.multilabel else self.num_classes + 1

    def replace(self, **changes: Any) -> RunContext:
        return replace(self, **changes)

    @classmethod
    def from_config(cls, config: Any, **extra: Any) -> RunContext:
        """Build from a parsed Config (duck-typed, so this module stays import-free)."""
        train = config.train
        values: dict[str, Any] = dict(
            num_classes=config.num_classes,
            in_channels=config.in_channels,
            multilabel=config.multilabel,
            patch_size=_tuple(config.patch_size),
            aug_patch_size=_tuple(config.aug_patch_size),
            num_pools=_tuple(config.num_pools),
            batch_size=train.batch_size,
            spacing=_tuple(config.spacing),
            seed=train.seed,
            fold=train.fold,
            workers=train.workers,
            config_dir=config.source_dir,
            data_dir=config.path(config.data.preprocessed),
            folds_path=config.path(config.data.folds)
            or (config.path(config.data.preprocessed) / "folds.csv" if config.data.preprocessed else None),
        )
        values.update(extra)
        return cls(**values)


def _tuple(value: Any) -> tuple | None:
    return None if value is None else tuple(value)

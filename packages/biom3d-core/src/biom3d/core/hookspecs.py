"""The eleven hooks plugins implement: one per component kind and one for stacks. Each takes no argument and
yields frozen spec records.

None is ``firstresult`` (pluggy calls plugins newest-first, so "first wins" would depend on install order)
and none is historic: the registry collects every record and resolves names itself.
"""

from __future__ import annotations

from collections.abc import Iterable

import pluggy

PROJECT = "biom3d"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def biom3d_preprocessors() -> Iterable:
    """Yield PreprocessorSpec records: turn raw images and masks into training-ready arrays."""


@hookspec
def biom3d_datasets() -> Iterable:
    """Yield DatasetSpec records: patch samplers with augmentation for training and validation."""


@hookspec
def biom3d_models() -> Iterable:
    """Yield ModelSpec records: networks built from params and the run context."""


@hookspec
def biom3d_metrics() -> Iterable:
    """Yield MetricSpec records: metrics and losses (``roles``)."""


@hookspec
def biom3d_trainers() -> Iterable:
    """Yield TrainerSpec records: training loops."""


@hookspec
def biom3d_predictors() -> Iterable:
    """Yield PredictorSpec records: whole-volume inference (tiling, blending, test-time augmentation)."""


@hookspec
def biom3d_postprocessors() -> Iterable:
    """Yield PostprocessorSpec records: turn model outputs into masks, remove noise."""


@hookspec
def biom3d_callbacks() -> Iterable:
    """Yield CallbackSpec records: code run at train/epoch/batch begin and end."""


@hookspec
def biom3d_readers() -> Iterable:
    """Yield ReaderSpec records: image readers chosen by file suffix."""


@hookspec
def biom3d_writers() -> Iterable:
    """Yield WriterSpec records: image writers chosen by file suffix."""


@hookspec
def biom3d_stacks() -> Iterable:
    """Yield StackSpec records: named sets of components that work together, the defaults of a config."""

"""The dataset fingerprint: median shape and spacing, foreground intensity statistics, channel layout.

It drives auto-configuration and CT normalisation, and a run folder keeps it so prediction preprocesses new
images exactly as the training images were.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from biom3d.core.builtins.resample import target_shape
from biom3d.core.builtins.spacing import say_mislabelled
from biom3d.core.errors import DataError
from biom3d.core.protocols import CaseStats
from biom3d.core.units import clean_unit, convert_spacing, dataset_unit, lengths_in, shown, spacing_near

FINGERPRINT_VERSION = 2  # 2: spacing_unit (a version-1 fingerprint's spacing is in its images' own units)
log = logging.getLogger("biom3d")


def build_fingerprint(stats: Sequence[CaseStats], *, num_classes: int, multilabel: bool, resample: bool = True) -> dict[str, Any]:
    """Aggregate per-case statistics; refuses datasets that mix channel counts or 2D and 3D images."""
    if not stats:
        raise DataError("no images to fingerprint")
    _check_consistency(stats)
    unit = dataset_unit(s.unit for s in stats if s.spacing is not None)
    spacings = _spacings(stats, unit)
    has_spacing = resample and all(sp is not None for sp in spacings)
    spacing = tuple(float(v) for v in np.median(np.array(spacings, dtype=float), axis=0)) if has_spacing else None
    shapes = np.array([target_shape(s.shape, sp, spacing) if spacing else s.shape
                       for s, sp in zip(stats, spacings, strict=True)])
    channels = stats[0].channels
    intensity = []
    for c in range(channels):
        samples = [s.extra["samples"][c] for s in stats if s.extra["samples"][c]]
        values = np.concatenate([np.asarray(v, dtype=np.float64) for v in samples] or [np.zeros(1)])
        p = np.percentile(values, [0.5, 5, 95, 99.5])
        intensity.append({
            "mean": float(values.mean()), "std": float(values.std()), "median": float(np.median(values)),
            "p00_5": float(p[0]), "p05": float(p[1]), "p95": float(p[2]), "p99_5": float(p[3]),
        })
    axes = sorted({s.extra["channel_axis"] for s in stats}, key=lambda a: -1 if a is None else a)
    return {
        "version": FINGERPRINT_VERSION,
        "num_images": len(stats),
        "num_classes": num_classes,
        "multilabel": multilabel,
        "in_channels": channels,
        "channel_axis": axes,
        "median_shape": [float(v) for v in np.median(shapes, axis=0)],
        "spacing": list(spacing) if spacing else None,
        "spacing_unit": unit if spacing else None,
        "original_median_shape": [float(v) for v in np.median(np.array([s.shape for s in stats]), axis=0)],
        "intensity": intensity,
    }


def _spacings(stats: Sequence[CaseStats], unit: str | None) -> list[tuple[float, ...] | None]:
    """Every case's spacing in the dataset's ``unit``, a case whose converted spacing lies orders of magnitude
    from the others' kept as read (:func:`biom3d.core.units.spacing_near`). The others' are those read in that
    unit already (a mislabelled case must not move the reference it is judged by), else all converted."""
    own = [s.spacing for s in stats if s.spacing is not None and unit and clean_unit(s.unit) == unit]
    known = own or [lengths_in(s.spacing, s.unit, unit) if unit else s.spacing for s in stats if s.spacing is not None]
    reference = (tuple(np.median(np.array(known, dtype=float), axis=0))
                 if known and len({len(p) for p in known}) == 1 else None)
    return [_in_unit(case, unit, reference) for case in stats]


def _in_unit(case: CaseStats, unit: str | None, reference) -> tuple[float, ...] | None:
    """``case``'s spacing in the dataset's ``unit``; kept as it is, with a warning, when its own unit is not a
    length (pixels, or a reader that does not say) while the others' are, or looks mislabelled."""
    if case.spacing is None or unit is None:
        return case.spacing
    if convert_spacing(case.spacing, case.unit, unit) is None:
        log.warning("%s: its spacing %s has no length unit (%s); taken as %s like the other images'", case.key,
                    list(case.spacing), case.unit or "none given", shown(unit))
        return case.spacing
    converted, kept = spacing_near(case.spacing, case.unit, unit, reference)
    if kept:
        say_mislabelled(case.key, tuple(case.spacing), str(case.unit), shown(unit), "the other images'")
    elif converted != tuple(case.spacing):
        log.info("%s: spacing %s %s is %s %s", case.key, list(case.spacing), shown(case.unit),
                 [float(f"{v:.6g}") for v in converted], shown(unit))
    return converted


def _check_consistency(stats: Sequence[CaseStats]) -> None:
    problems = []
    channels = {s.channels for s in stats}
    if len(channels) > 1:
        first = stats[0]
        problems += [f"{s.key}: {s.channels} channel(s), but {first.key} has {first.channels}"
                     for s in stats if s.channels != first.channels]
    flat = [s for s in stats if s.shape[0] == 1]
    if flat and len(flat) < len(stats):
        problems += [f"{s.key}: a 2D image in a 3D dataset (shape {s.shape[1:]})" for s in flat]
    if problems:
        raise DataError("the dataset is not consistent:\n  " + "\n  ".join(problems[:10])
                        + "\nAll images must have the same number of channels and dimensions.")

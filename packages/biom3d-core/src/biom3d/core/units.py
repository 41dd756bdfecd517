"""Length units of voxel spacing.

Readers report spacing in their format's own unit and name it in ``ImageData.meta["unit"]``: TIFF readers in
micrometres ("um"), SimpleITK in millimetres ("mm", ITK converts a micron NIfTI). The fingerprint records the
unit its spacing is in, so an image read in another unit is converted before it is compared or resampled: a
TIFF-trained model predicting a NIfTI of the same cells would otherwise resample it 1000-fold.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

# Length units as ImageJ, OME, NIfTI and ITK write them, in micrometres.
UM_PER_UNIT = {
    "pm": 1e-6,
    "å": 1e-4,
    "angstrom": 1e-4,
    "nm": 1e-3,
    "nanometer": 1e-3,
    "nanometre": 1e-3,
    "um": 1.0,
    "µm": 1.0,
    "μm": 1.0,
    "micron": 1.0,
    "microns": 1.0,
    "micrometer": 1.0,
    "micrometre": 1.0,
    "mm": 1e3,
    "millimeter": 1e3,
    "millimetre": 1e3,
    "cm": 1e4,
    "centimeter": 1e4,
    "m": 1e6,
    "meter": 1e6,
    "metre": 1e6,
    "in": 25400.0,
    "inch": 25400.0,
}
MISLABELLED = 100.0  # converted spacings this many times the training one are taken as a mislabelled unit...
NEAR = 10.0  # ...when the values as read are within this factor of it
_SHOWN = {"um": "µm", "micron": "µm", "microns": "µm", "micrometer": "µm", "micrometre": "µm", "μm": "µm"}


def clean_unit(unit: Any) -> str | None:
    """A unit as written, trimmed, with ImageJ's escaped micro sign decoded; None for none or pixels."""
    if not isinstance(unit, str):
        return None
    unit = unit.strip().replace("\\u00B5", "µ").replace("\\u00b5", "µ")
    return None if unit.lower() in ("", "pixel", "pixels", "px") else unit


def um_per_unit(unit: Any) -> float | None:
    """Micrometres per ``unit``; None for 'pixel', empty or unknown units."""
    unit = clean_unit(unit)
    return UM_PER_UNIT.get(unit.lower()) if unit else None


def mm_per_unit(unit: Any) -> float:
    """The factor that takes lengths in ``unit`` to millimetres, the unit ITK and NIfTI writers store (0.2 um is
    0.0002 mm, not 0.2); 1 for a unit that is not a length (pixel, none), whose values are kept as they are."""
    um = um_per_unit(unit)
    return 1.0 if um is None else um / 1000.0


def convert_spacing(spacing: Sequence[float], unit: Any, target: Any) -> tuple[float, ...] | None:
    """``spacing`` in ``unit`` expressed in ``target``; None when either is not a length (nothing to convert
    by: the caller keeps the values as they are)."""
    here, there = um_per_unit(unit), um_per_unit(target)
    if here is None or there is None:
        return None
    factor = here / there
    return tuple(float(v) * factor for v in spacing)


def lengths_in(values: Sequence[float], unit: Any, target: Any) -> tuple[float, ...]:
    """``values`` in ``target`` when both units are lengths, else as they are."""
    return convert_spacing(values, unit, target) or tuple(float(v) for v in values)


def spacing_near(spacing: Sequence[float], unit: Any, target: Any,
                 reference: Sequence[float] | None) -> tuple[tuple[float, ...], bool]:
    """``spacing`` in ``target`` as :func:`convert_spacing`, unless that puts it orders of magnitude from
    ``reference`` (the training spacing) while the values as read are near it: many microscopy NIfTI files hold
    micrometres under NIfTI's "mm" (or unknown) unit, and resampling them 1000-fold would fill the memory.
    Returns the spacing and whether the values were kept as read for that reason."""
    values = tuple(float(v) for v in spacing)
    converted = convert_spacing(values, unit, target)
    if converted is None:
        return values, False
    comparable = reference is not None and len(reference) == len(values) and all(v > 0 for v in (*values, *reference))
    if comparable and fold(converted, reference) >= MISLABELLED and fold(values, reference) <= NEAR:
        return values, True
    return converted, False


def fold(spacing: Sequence[float], reference: Sequence[float]) -> float:
    """How many times larger or smaller ``spacing`` is than ``reference``, on the geometric mean of its axes."""
    ratio = math.prod(s / r for s, r in zip(spacing, reference, strict=True)) ** (1 / len(spacing))
    return max(ratio, 1 / ratio)


def dataset_unit(units: Iterable[Any]) -> str | None:
    """The unit a dataset's spacing is recorded in: the commonest length unit among its images (the first on a
    tie), else None."""
    lengths = [clean_unit(u) for u in units if um_per_unit(u) is not None]
    if not lengths:
        return None
    counts = Counter(lengths)
    return max(counts, key=lambda u: (counts[u], -lengths.index(u)))


def shown(unit: Any) -> str:
    """``unit`` as a person reads it: µm for every spelling of micrometres, '' for none."""
    unit = clean_unit(unit)
    return "" if unit is None else _SHOWN.get(unit.lower(), unit)

"""TIFF metadata: axes and voxel spacing read from ImageJ or OME-XML, and the same written back.

Pure functions over tifffile's parsed metadata (no file access), so each rule is tested on its own. Spacing is
returned in micrometres, ordered like the array's spatial axes (D, H, W); ``None`` where the file does not say.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from typing import Any

from biom3d.core.units import clean_unit, um_per_unit

SPATIAL = "ZYX"


def normalise_axes(axes: str, shape: Sequence[int]) -> tuple[str, tuple[int | slice, ...]]:
    """Axes with the channel axis explicit, and the indexing that drops singleton time axes.

    tifffile names RGB samples 'S' (a channel axis here) and a shaped file's unknown leading axis 'Q' (or 'I'
    for image sequences); a lone unknown axis before 'YX' is the Z of a 3-D stack. Other unknown axes stay
    as they are, for the preprocessing's channel-axis detection. Returns ``(axes, index)`` where
    ``array[index]`` squeezes the singleton 'T'.
    """
    keep = [a != "T" or n != 1 for a, n in zip(axes, shape, strict=True)]
    index = tuple(slice(None) if k else 0 for k in keep)
    out = [a for a, k in zip(axes, keep, strict=True) if k]
    if "S" in out and "C" not in out:
        out[out.index("S")] = "C"
    unknown = [i for i, a in enumerate(out) if a in "QI"]
    if len(unknown) == 1 and "Z" not in out and "".join(out[unknown[0] + 1 :]).startswith("YX"):
        out[unknown[0]] = "Z"
    return "".join(out), index


def spatial_axes(axes: str) -> str:
    """The spatial letters of ``axes``, in array order (always a suffix of 'ZYX' for TIFF)."""
    return "".join(a for a in axes if a in SPATIAL)


def imagej_axes(axes: str, metadata: Mapping[str, Any]) -> str:
    """Read a channel axis as Z when an ImageJ file has no Z but a Z spacing.

    tifffile writes a 3-D array passed with ``imagej=True`` and no ``axes`` as channels ('CYX', with
    ``channels=N``), yet such files are z-stacks whenever they carry a Z ``spacing``. A 2-D multichannel image
    from Fiji only carries ``spacing`` if it was cut from a calibrated stack: this rule reads it as a stack.
    """
    if "Z" not in axes and "C" in axes and metadata.get("spacing") is not None:
        return axes.replace("C", "Z")
    return axes


def imagej_spacing(
    axes: str, metadata: Mapping[str, Any], x_resolution: Any, y_resolution: Any
) -> tuple[tuple[float, ...] | None, str | None]:
    """Spacing from ImageJ's description (Z ``spacing``, ``unit``) and the X/YResolution tags (pixels/unit).

    Returns ``(spacing, unit)``: spacing in micrometres when the unit is a length, in the file's own units
    (named by ``unit``) otherwise; ``None`` for an uncalibrated file. Missing Z spacing is 1 unit, as in ImageJ.
    """
    unit = clean_unit(metadata.get("unit"))
    per_axis = {
        "X": (_from_resolution(x_resolution), unit),
        "Y": (_from_resolution(y_resolution), clean_unit(metadata.get("yunit")) or unit),
        "Z": (_as_float(metadata.get("spacing")), clean_unit(metadata.get("zunit")) or unit),
    }
    spatial = spatial_axes(axes)
    values = [per_axis[a][0] for a in spatial]
    if not unit and all(v in (None, 1.0) for v in values):
        return None, None
    spacing: list[float] = []
    for a in spatial:
        value, axis_unit = per_axis[a]
        value = 1.0 if value is None else value
        factor = um_per_unit(axis_unit)
        spacing.append(value * factor if factor is not None else value)
    converted = all(um_per_unit(per_axis[a][1]) is not None for a in spatial)
    return tuple(spacing), "um" if converted else (unit or "pixel")


def ome_spacing(axes: str, ome_xml: str) -> tuple[float, ...] | None:
    """Spacing from the first image's ``Pixels`` PhysicalSize{X,Y,Z} (default unit µm), or ``None`` when none is
    given. An axis left out (often Z: a microscope's XY calibration alone) counts 1 µm, as ImageJ's metadata
    does, so the X and Y ones are kept."""
    pixels = _first_pixels(ome_xml)
    if pixels is None:
        return None
    spacing: list[float] = []
    for a in spatial_axes(axes):
        value = _as_float(pixels.get(f"PhysicalSize{a}"))
        factor = um_per_unit(pixels.get(f"PhysicalSize{a}Unit", "µm"))
        if value is not None and (factor is None or value <= 0):
            return None  # a size we cannot read as a length
        spacing.append(None if value is None else value * factor)
    if all(v is None for v in spacing):
        return None
    return tuple(1.0 if v is None else v for v in spacing)




def imagej_write_metadata(spacing: Sequence[float] | None, unit: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(imwrite kwargs, metadata)`` carrying ``spacing`` (D, H, W or H, W) the way ImageJ stores it."""
    if not spacing:
        return {}, {}
    *z, y, x = spacing
    metadata: dict[str, Any] = {"unit": unit}
    if z:
        metadata["spacing"] = float(z[0])
    return {"resolution": (1.0 / float(x), 1.0 / float(y))}, metadata


def ome_write_metadata(spacing: Sequence[float] | None, unit: str) -> dict[str, Any]:
    """OME ``PhysicalSize*`` entries for tifffile's ``metadata`` argument."""
    if not spacing:
        return {}
    out: dict[str, Any] = {}
    for a, value in zip(SPATIAL[-len(spacing) :], spacing, strict=True):
        out[f"PhysicalSize{a}"] = float(value)
        out[f"PhysicalSize{a}Unit"] = unit
    return out


def _first_pixels(ome_xml: str) -> ET.Element | None:
    try:
        root = ET.fromstring(ome_xml)
    except ET.ParseError:
        return None
    for element in root.iter():
        if element.tag.rsplit("}", 1)[-1] == "Pixels":
            return element
    return None


def _from_resolution(value: Any) -> float | None:
    """X/YResolution is pixels per unit, as a (numerator, denominator) rational: spacing is its inverse."""
    if value is None:
        return None
    num, den = value if isinstance(value, tuple | list) else (value, 1)
    return float(den) / float(num) if num else None


def _as_float(value: Any) -> float | None:
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None



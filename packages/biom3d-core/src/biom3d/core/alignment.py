"""Whether a mask lies on its image's voxel grid, judged by their headers (nnU-Net checks the same before it
trains): the arrays are paired voxel for voxel, so a mask that a tool reoriented (nibabel's
``as_closest_canonical``, a viewer saving in RAS) would train or score mirrored labels without a word.

A direction that differs by axis flips or swaps, with the grids then coinciding, is undone exactly (the voxels
are only reordered); any other rotation would need resampling and is refused, naming both files. Spacings and
origins that still differ are said, since the voxels are paired as stored either way.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from biom3d.core.errors import DataError
from biom3d.core.imagedata import ImageData
from biom3d.core.units import lengths_in, shown

SPACING_RTOL = 1e-3  # float32 headers round 2.0 to 1.9999999
DIRECTION_ATOL = 1e-3  # direction cosines this close are the same axis (NIfTI's qform is float32 quaternions)
ORIGIN_VOXELS = 0.1  # origins closer than this fraction of a voxel are the same


def align_mask(array: Any, mask: ImageData, image: ImageData, *, what: str = "mask") -> tuple[Any, list[str]]:
    """``array`` (``mask``'s data) with its spatial axes put in ``image``'s voxel order, and the notes that say
    what was changed or differs (``what`` names the mask in them: "mask", "ground truth")."""
    notes: list[str] = []
    unit = (image.meta or {}).get("unit")
    spacing_i = _floats(image.spacing)
    spacing_m = _lengths_in(_floats(mask.spacing), mask, unit)
    origin_m = _lengths_in(_floats(mask.origin), mask, unit)
    axes = _spatial_positions(np.ndim(array), (mask.meta or {}).get("axes"))
    direction_i, direction_m = _matrix(image.direction), _matrix(mask.direction)
    oriented = (axes is not None and direction_i is not None and direction_m is not None
                and len(spacing_i or ()) == 3 and len(spacing_m or ()) == 3)
    if oriented and not np.allclose(direction_i.T @ direction_m, np.eye(3), atol=DIRECTION_ATOL):
        order = _signed_permutation(direction_i.T @ direction_m)
        if order is None:
            raise DataError(f"{what} {mask.path}: its direction {_shown(mask.direction)} is rotated against its image's "
                            f"{_shown(image.direction)} ({image.path}), not only flipped; resample the {what} onto "
                            "the image's grid first (SimpleITK's Resample with the image as reference)")
        array, spacing_m, origin_m = _reorient(np.asarray(array), axes, order, spacing_m, origin_m, direction_m)
        flips = "".join("xyz"[i] for i, (_, sign) in enumerate(order) if sign < 0)
        swaps = [i for i, (j, _) in enumerate(order) if j != i]
        done = ", ".join(filter(None, [f"flipped along {', '.join(flips)}" if flips else "",
                                       "axes swapped" if swaps else ""]))
        notes.append(f"{what} {mask.path}: stored in another orientation than its image {image.path} (direction "
                     f"{_shown(mask.direction)} vs {_shown(image.direction)}); {done} onto the image's voxel order")
    if spacing_i and spacing_m and len(spacing_i) == len(spacing_m) and not np.allclose(spacing_m, spacing_i,
                                                                                        rtol=SPACING_RTOL):
        notes.append(f"{what} {mask.path}: spacing {_shown(spacing_m)} {shown(unit)} differs from its image's "
                     f"{_shown(spacing_i)} ({image.path}); its voxels are paired with the image's as stored")
    origin_i = _floats(image.origin)
    if oriented and origin_i and origin_m and len(origin_i) == len(origin_m):
        gap = float(np.linalg.norm(np.subtract(origin_m, origin_i)))
        if gap > ORIGIN_VOXELS * min(spacing_i):
            notes.append(f"{what} {mask.path}: its origin lies {gap:.4g} {shown(unit)} from its image's "
                         f"({image.path}); its voxels are paired with the image's as stored, which is right only if "
                         "the mask was drawn on that image")
    return array, notes


def _reorient(array, axes, order, spacing, origin, direction):
    """The array with mask axis ``order[i][0]`` moved to image axis i (ITK x, y, z numbering) and flipped where
    its sign is negative; the spacing and origin of the result, in (D, H, W) order."""
    size = [array.shape[axes[2 - j]] for j in range(3)]  # ITK order
    spacing_xyz, origin_xyz = list(spacing[::-1]), np.asarray(origin[::-1] if origin else (0.0, 0.0, 0.0))
    transpose = list(range(array.ndim))
    corner = origin_xyz.copy()
    for i, (j, sign) in enumerate(order):
        transpose[axes[2 - i]] = axes[2 - j]
        if sign < 0:
            corner = corner + direction[:, j] * spacing_xyz[j] * (size[j] - 1)
    out = np.transpose(array, transpose)
    flips = tuple(axes[2 - i] for i, (_, sign) in enumerate(order) if sign < 0)
    if flips:
        out = np.flip(out, flips)
    new_spacing = tuple(spacing_xyz[j] for j, _ in order)[::-1]
    return np.ascontiguousarray(out), new_spacing, (tuple(float(v) for v in corner[::-1]) if origin else None)


def _signed_permutation(matrix: np.ndarray) -> list[tuple[int, int]] | None:
    """For each row i, the column j holding ±1 and its sign, when ``matrix`` is a signed permutation."""
    rounded = np.round(matrix)
    ones = np.abs(rounded)
    if not np.allclose(matrix, rounded, atol=DIRECTION_ATOL) or (ones.sum(0) != 1).any() or (ones.sum(1) != 1).any():
        return None
    columns = ones.argmax(1)
    return [(int(j), int(rounded[i, j])) for i, j in enumerate(columns)]


def _spatial_positions(ndim: int, axes: str | None) -> tuple[int, int, int] | None:
    """Where the array keeps z, y, x: by the reader's axes, else its last three when it has three axes."""
    if axes and len(axes) == ndim and all(a in axes.upper() for a in "ZYX"):
        upper = axes.upper()
        return upper.index("Z"), upper.index("Y"), upper.index("X")
    return (0, 1, 2) if ndim == 3 else None


def _lengths_in(values, image: ImageData, unit):
    return values if values is None or not unit else lengths_in(values, (image.meta or {}).get("unit"), unit)


def _matrix(direction) -> np.ndarray | None:
    """The spatial 3x3 direction: itself, or the top-left block of a 4-D image's (SimpleITK reads a multi-modal
    NIfTI as one 4-D image whose fourth axis is the channels)."""
    if direction is None or len(direction) not in (9, 16):
        return None
    n = 3 if len(direction) == 9 else 4
    return np.asarray(direction, dtype=np.float64).reshape(n, n)[:3, :3]


def _floats(values) -> tuple[float, ...] | None:
    return None if values is None else tuple(float(v) for v in values)


def _shown(values) -> str:
    return "(" + ", ".join(f"{float(v):.4g}" for v in values) + ")"

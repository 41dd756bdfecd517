"""An image as read from disk: the array plus the metadata a writer needs to write a prediction back."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class ImageData:
    """``array`` as stored, with spatial axes last in (D, H, W) order and an optional channel axis.

    ``spacing``/``origin`` are per spatial axis in the array's (D, H, W) order; ``direction`` is the
    row-major 3x3 cosine matrix in SimpleITK's (x, y, z) order. ``meta`` holds format-specific extras a writer
    may reuse (ImageJ/OME metadata, DICOM tags, the reader's id); ``meta["axes"]``, when a reader knows them, names
    the stored axes (``"ZYX"``, ``"CZYX"``, ``"YX"``...): preprocessing finds the channel axis with it and predict
    writes a 2D input's mask back in 2D.
    """

    array: Any
    spacing: tuple[float, ...] | None = None
    origin: tuple[float, ...] | None = None
    direction: tuple[float, ...] | None = None
    path: Path | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape)


def in_axes_order(array: Any, axes: str, path: Any = None) -> tuple[Any, str, int | None]:
    """``array`` with the axes its reader named (``meta["axes"]``) put in C, Z, Y, X order, as far as it has
    them: S (samples) counts as C, singleton T and Q axes are dropped. Returns the array, the axes it now has and
    where the channel axis was among the kept stored axes (None: no channel axis). Every stage that compares
    or converts arrays of several files goes through this, so that a ZCYX ImageJ stack, a ZYXC NIfTI and a
    CZYX NumPy array mean the same."""
    import numpy as np

    from biom3d.core.errors import DataError

    axes = axes.upper()
    for extra in "TQ":
        i = axes.find(extra)
        if i >= 0 and array.shape[i] == 1:
            array, axes = array.squeeze(i), axes[:i] + axes[i + 1 :]
    axes = axes.replace("S", "C")
    if set(axes) - set("CZYX") or len(set(axes)) != len(axes) or len(axes) != array.ndim:
        raise DataError(f"{path}: unsupported axes {axes!r} for shape {tuple(array.shape)}; pass --channel-axis to "
                        "`biom3d preprocess` or `biom3d run` (preprocessor.params.channel_axis in a config)")
    channel = axes.find("C")
    present = "".join(a for a in "CZYX" if a in axes)
    return np.transpose(array, [axes.find(a) for a in present]), present, (channel if channel >= 0 else None)


def mask_channels_first(array: Any, axes: str | None, path: Any = None) -> Any:
    """A mask's channels first, wherever its file keeps them: by the reader's axes when they name a channel
    axis (a 2D mask then gets a depth of one: (K, 1, H, W)), else a singleton first or last axis is taken for
    the channel; a channel axis of one is dropped, so a label map comes back as stored."""
    if axes and len(axes) == array.ndim and "C" in axes.upper().replace("S", "C"):
        array, present, _ = in_axes_order(array, axes, path)
        if "Z" not in present:
            array = array[:, None]
        return array[0] if array.shape[0] == 1 else array
    if array.ndim == 4 and 1 in (array.shape[0], array.shape[3]):
        return array[0] if array.shape[0] == 1 else array[..., 0]
    return array

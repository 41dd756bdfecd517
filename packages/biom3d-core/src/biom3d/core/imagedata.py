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

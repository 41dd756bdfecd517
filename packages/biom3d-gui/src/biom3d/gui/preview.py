"""A slice of a 3D image with its mask (or prediction) laid over it, as a PNG: what the page shows to check
that masks fit their images and that predictions look right.

Images are read with the reader the registry picks (any format biom3d reads), intensities scaled between
their 0.5 and 99.5 percentiles, labels coloured one colour per class. The slice shown by default is the one
with the most foreground (the middle one without a mask). The last few volumes read are kept in memory, so
moving the slice slider does not read the file again.
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from biom3d.core.errors import DataError

COLOURS = np.array([[230, 60, 50], [40, 200, 90], [60, 120, 240], [240, 200, 40], [200, 80, 220], [40, 210, 220]],
                   dtype=np.float32)
ALPHA = 0.45
CACHE_SIZE, CACHE_BYTES = 4, 2**30  # the volumes a slider moves through, read once (a light-sheet stack may not fit)
# (path, mtime, size, as labels) -> (the volume, its foreground labels: one np.unique per mask, not per slice)
_cache: OrderedDict[tuple[str, int, int, bool], tuple[np.ndarray, list[int]]] = OrderedDict()
_lock = threading.Lock()


def render(image: Path, mask: Path | None = None, *, index: int | None = None, registry=None) -> tuple[bytes, dict[str, Any]]:
    """PNG bytes and facts (``slice``, ``depth``, ``shape``) of slice ``index`` (default: see module doc)."""
    volume, _ = _volume(image, registry, labels=False)
    labels, values = _volume(mask, registry, labels=True) if mask is not None else (None, [])
    if labels is not None and labels.shape != volume.shape:
        raise DataError(f"{mask} has shape {list(labels.shape)} but {image} has {list(volume.shape)}: they are not "
                        "an image and its mask")
    depth = volume.shape[0]
    if index is None:
        area = (labels > 0).reshape(depth, -1).sum(1) if labels is not None else np.zeros(depth)
        index = int(np.argmax(area)) if area.any() else depth // 2
    index = min(max(int(index), 0), depth - 1)
    rgb = overlay(volume[index], None if labels is None else labels[index], values)
    return png(rgb), {"slice": index, "depth": depth, "shape": list(volume.shape)}


def overlay(image: np.ndarray, labels: np.ndarray | None, values: list[int] | None = None) -> np.ndarray:
    """(H, W, 3) uint8: the grey image, each label's colour blended over it. ``values``: the mask's labels
    (default: this slice's); a mask with one foreground value (1, 255...) gets the first colour."""
    pixels = image.astype(np.float32)
    finite = pixels[np.isfinite(pixels)]
    lo, hi = (np.percentile(finite, [0.5, 99.5]) if finite.size else (0.0, 1.0))
    grey = np.clip((pixels - lo) / (hi - lo if hi > lo else 1.0), 0, 1) * 255
    rgb = np.repeat(np.nan_to_num(grey)[..., None], 3, axis=-1)
    if labels is not None:
        found = values if values is not None else [int(v) for v in np.unique(labels) if v > 0]
        for label in found:
            colour = COLOURS[0 if len(found) == 1 else (label - 1) % len(COLOURS)]
            where = labels == label
            rgb[where] = (1 - ALPHA) * rgb[where] + ALPHA * colour
    return rgb.round().astype(np.uint8)


def png(rgb: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(buf, format="PNG")
    return buf.getvalue()


def _volume(path: Path, registry, *, labels: bool) -> tuple[np.ndarray, list[int]]:
    """(D, H, W): a 2D image as one slice; channels: the first one (images) or labels from one-hot (masks);
    and a mask's foreground labels."""
    path = Path(path)
    stat = path.stat()
    key = (str(path), stat.st_mtime_ns, stat.st_size, labels)  # a file read as an image differs as a mask
    with _lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
    array = _spatial(_read(path, registry), labels=labels)
    entry = array, [int(v) for v in np.unique(array) if v > 0] if labels else []
    with _lock:
        _cache[key] = entry
        while len(_cache) > CACHE_SIZE or (len(_cache) > 1 and sum(a.nbytes for a, _ in _cache.values()) > CACHE_BYTES):
            _cache.popitem(last=False)
        if array.nbytes > CACHE_BYTES:
            _cache.pop(key, None)
    return entry


def _read(path: Path, registry) -> tuple[np.ndarray, str | None]:
    from biom3d.core.discovery import get_registry

    registry = registry or get_registry()
    try:
        data = registry.reader_for(path).build({}, None)(path)
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"{path}: cannot be read ({type(exc).__name__}: {exc})") from exc
    axes = data.meta.get("axes") if isinstance(data.meta, dict) else None
    return np.asarray(data.array), axes if isinstance(axes, str) else None


def _spatial(read: tuple[np.ndarray, str | None], *, labels: bool) -> np.ndarray:
    array, axes = read
    if array.ndim == 2:
        return array[None]
    if array.ndim == 3:
        return array
    if array.ndim != 4:
        raise DataError(f"an image of {array.ndim} dimensions (shape {list(array.shape)}) cannot be previewed")
    channel = axes.upper().index("C") if axes and "C" in axes.upper() and len(axes) == 4 else int(np.argmin(array.shape))
    stack = np.moveaxis(array, channel, 0)
    if labels:  # one-hot or multi-label: the class of the largest value, 0 where none is set
        return np.where(stack.max(0) > 0, stack.argmax(0) + 1, 0)
    return stack[0]

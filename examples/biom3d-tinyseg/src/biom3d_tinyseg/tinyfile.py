"""The ``.tiny`` format and its reader (:class:`biom3d.core.protocols.Reader`) and writer
(:class:`biom3d.core.protocols.Writer`).

A file is ``b"TINY"``, the header length (uint32, little-endian), a UTF-8 JSON header (dtype, shape, spacing,
origin, direction, axes), then the C-order voxels compressed with zlib.
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
import zlib
from pathlib import Path

import numpy as np

from biom3d.core.errors import DataError
from biom3d.core.imagedata import ImageData

MAGIC = b"TINY"


def build_reader(params, ctx):
    return read_tiny


def build_writer(params, ctx):
    return TinyWriter(overwrite=params.overwrite, level=params.level)


def read_tiny(path: Path) -> ImageData:
    path = Path(path)
    data = path.read_bytes()
    if data[:4] != MAGIC or len(data) < 8:
        raise DataError(f"{path}: not a .tiny file (no {MAGIC!r} header)")
    (size,) = struct.unpack("<I", data[4:8])
    try:
        header = json.loads(data[8:8 + size])
        dtype, shape = np.dtype(header["dtype"]), tuple(int(s) for s in header["shape"])
        array = np.frombuffer(zlib.decompress(data[8 + size:]), dtype=dtype).reshape(shape).copy()
    except (ValueError, KeyError, TypeError, zlib.error) as exc:
        raise DataError(f"{path}: corrupt .tiny file ({type(exc).__name__}: {exc})") from exc
    meta = {"format": "tiny"}
    if header.get("axes"):
        meta["axes"] = header["axes"]  # "ZYX", "CZYX"...: preprocessing finds the channel axis with it
    return ImageData(array, spacing=_floats(header.get("spacing")), origin=_floats(header.get("origin")),
                     direction=_floats(header.get("direction")), path=path, meta=meta)


def write_tiny(path: Path, array, *, spacing=None, origin=None, direction=None, axes: str | None = None,
               level: int = 6, overwrite: bool = True) -> None:
    """Atomic: a temporary file in the target's folder, flushed to disk, then renamed over the target, so a
    killed process never leaves a truncated file under the final name."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise DataError(f"{path} already exists; pass --overwrite to replace it")
    array = np.ascontiguousarray(array)
    axes = axes or {2: "YX", 3: "ZYX", 4: "CZYX"}.get(array.ndim)
    header = json.dumps({"dtype": array.dtype.str, "shape": list(array.shape), "spacing": _floats(spacing),
                         "origin": _floats(origin), "direction": _floats(direction), "axes": axes}).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(MAGIC + struct.pack("<I", len(header)) + header)
            f.write(zlib.compress(array.tobytes(), level))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class TinyWriter:
    def __init__(self, *, overwrite: bool, level: int):
        self.overwrite, self.level = overwrite, level

    def __call__(self, path: Path, array: np.ndarray, ref: ImageData | None) -> None:
        array = np.asarray(array)
        spatial = array.shape[-3:] if array.ndim >= 3 else array.shape
        meta = {}
        if ref is not None:  # the input image: keep its geometry where it fits the mask
            for key in ("spacing", "origin"):
                value = getattr(ref, key)
                meta[key] = value if value is not None and len(value) == len(spatial) else None
            meta["direction"] = ref.direction
        write_tiny(path, array, level=self.level, overwrite=self.overwrite, **meta)


def _floats(values):
    return None if values is None else tuple(float(v) for v in values)

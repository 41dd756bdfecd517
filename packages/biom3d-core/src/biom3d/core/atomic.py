"""Atomic writes: write to a temporary file in the same folder, fsync, then rename over the target.

An interrupted process leaves either the old file or the new one, never half a file.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO


@contextlib.contextmanager
def atomic_path(path: Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (ending in ``suffix``, so format-sniffing writers work); on
    success it replaces ``path``, on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + suffix, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def atomic_write(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Call ``write(file)`` on a temporary binary file, then move it over ``path``."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        write(f)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(Path(path), lambda f: f.write(text.encode("utf-8")))


def remove_stale_temporaries(folder: Path) -> int:
    """Delete temporaries a killed process left behind (``.<name>.<random>...tmp``); returns how many."""
    count = 0
    for tmp in Path(folder).rglob(".*.tmp*"):
        if tmp.is_file() and ".tmp" in tmp.name:
            tmp.unlink(missing_ok=True)
            count += 1
    return count

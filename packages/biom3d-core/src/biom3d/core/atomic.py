"""Atomic writes: write to a temporary file in the same folder, fsync, then rename over the target.

An interrupted process leaves either the old file or the new one, never half a file; a failed write (no
space left, read-only folder) becomes one error naming the file, and its temporary is removed. Files get the
mode ``open()`` would give them (0666 less the umask), not ``mkstemp``'s private 0600.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO

from biom3d.core.errors import Biom3dError, InputError, RunError

#: what ``tempfile.mkstemp(prefix=".<name>.", suffix=".tmp<suffix>")`` names a temporary: the target's name,
#: eight random characters, ``.tmp`` and an optional format suffix (``.png``, ``.nii.gz``)
_TEMPORARY = re.compile(r"^\.(?P<target>.+)\.[A-Za-z0-9_]{8}\.tmp(\.[A-Za-z0-9.]+)?$")
_DENIED = (errno.EACCES, errno.EPERM)
_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


@contextlib.contextmanager
def atomic_path(path: Path, suffix: str = "", *, size: int | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (ending in ``suffix``, so format-sniffing writers work); on
    success it replaces ``path``, on error it is removed. An OSError becomes :func:`write_error` (``size``,
    the bytes to be written when known, goes into a disk-full message)."""
    path = Path(path)
    tmp_path: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + suffix, dir=path.parent)
        os.close(fd)
        tmp_path = Path(tmp)
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_umask())  # whatever the writer did, the mode a plain open() gives
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    except OSError as exc:
        _discard(tmp_path)
        raise write_error(exc, path, size) from exc
    except BaseException:
        _discard(tmp_path)
        raise


def atomic_write(path: Path, write: Callable[[IO[bytes]], None], *, size: int | None = None) -> None:
    """Call ``write(file)`` on a temporary binary file, then move it over ``path``."""
    with atomic_path(path, size=size) as tmp, open(tmp, "wb") as f:
        write(f)


def atomic_write_text(path: Path, text: str) -> None:
    data = text.encode("utf-8")
    atomic_write(Path(path), lambda f: f.write(data), size=len(data))


def atomic_copy(source: Path, target: Path) -> None:
    """``shutil.copyfile`` through a temporary, so a kill mid-copy never leaves half of ``target``."""
    with atomic_path(target, size=Path(source).stat().st_size) as tmp:
        shutil.copyfile(source, tmp)


def remove_stale_temporaries(folder: Path, *, names: Iterable[str] | None = None,
                             targets: Iterable[Path] | None = None, recursive: bool = True) -> int:
    """Delete temporaries a killed process left behind under ``folder`` (only names this module makes;
    with ``names``, only those of targets so named; with ``targets``, only those of these very files: another
    process writing ``b/x.nii.gz`` keeps its temporary when this one removes ``a/x.nii.gz``'s); returns how many."""
    wanted = None if names is None else set(names)
    paths = None if targets is None else {Path(t).absolute() for t in targets}
    count = 0
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    for tmp in folder.rglob(".*.tmp*") if recursive else folder.glob(".*.tmp*"):
        match = _TEMPORARY.match(tmp.name)
        if not match or (wanted is not None and match["target"] not in wanted):
            continue
        if paths is not None and (tmp.parent / match["target"]).absolute() not in paths:
            continue
        if tmp.is_file() and not tmp.is_symlink():
            tmp.unlink(missing_ok=True)
            count += 1
    return count


def is_temporary(path: Path) -> bool:
    """Whether ``path`` is named like a temporary of this module."""
    return _TEMPORARY.match(Path(path).name) is not None


def write_error(exc: OSError, path: Path | str | None = None, size: int | None = None) -> Biom3dError:
    """One paragraph for a failed write: what, where, why, and what to do. A folder the user cannot write
    is bad input (exit 2); a full disk or an I/O failure is a run failure (exit 1)."""
    path = Path(path if path is not None else exc.filename or "?")
    folder = path.parent
    code = exc.errno
    if code is None and disk_full(folder, size):  # numpy's short write ("N requested and M written")
        code = errno.ENOSPC
    if code in _DENIED:
        return InputError(f"cannot write {path}: permission denied ({folder} is not writable by this user); "
                          "choose another output folder (--out, --output, --runs-dir, --csv, runs_dir:) or fix "
                          "its permissions")
    if code == errno.EROFS:
        return InputError(f"cannot write {path}: {folder} is on a read-only file system; choose an output folder "
                          "on a writable disk (--out, --output, --runs-dir, --csv, runs_dir:)")
    if code in _FULL:
        needed = f", about {_size(size)} needed" if size else ""
        return RunError(f"cannot write {path}: no space left on the disk that holds {folder} "
                        f"({_size(_free(folder))} free{needed}); free some space or choose an output folder on "
                        "another disk. No partial file was kept under the final name; re-run to continue")
    what = os.strerror(code) if code else str(exc)
    return RunError(f"cannot write {path}: {what} ({type(exc).__name__}); check the disk and the path, then re-run")


def os_error(exc: OSError) -> Biom3dError:
    """An OSError that reached the command line, as one paragraph naming its file (read or write)."""
    if exc.errno in _DENIED + (errno.EROFS,) + _FULL:
        return write_error(exc)
    where = f"{exc.filename}: " if exc.filename else ""
    what = exc.strerror or str(exc)
    if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.ELOOP, errno.ENAMETOOLONG):
        return InputError(f"{where}{what}; check the path")
    return RunError(f"{where}{what} ({type(exc).__name__}); check the disk and the path, then re-run")


def disk_full(folder: Path, size: int | None = None) -> bool:
    """Whether the disk of ``folder`` has less than ``size`` bytes (or 1 MiB) left: what a failed write that
    names no errno (numpy's short write, torch's stream writer) most likely met."""
    free = _free(Path(folder))
    return free is not None and free < max(size or 0, 2**20)


def _discard(tmp: Path | None) -> None:
    if tmp is not None:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def _umask() -> int:
    """The process umask: read from /proc where it exists (no race), else set and restored."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text(encoding="utf-8").splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _free(folder: Path) -> int | None:
    for candidate in (folder, *folder.parents):
        with contextlib.suppress(OSError):
            return shutil.disk_usage(candidate).free
    return None


def _size(n: int | None) -> str:
    if n is None:
        return "unknown"
    if n < 1024:
        return f"{n} bytes"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB"):
        value /= 1024
        if value < 1024:
            return f"{value:.1f} {unit}"
    return f"{value / 1024:.1f} TiB"

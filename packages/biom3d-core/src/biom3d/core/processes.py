"""Whether a process still runs, asked without touching it: the GUI follows its jobs across its own restarts, and
io's shared batches let go of the tables of loader workers that exited."""

from __future__ import annotations

import os
from pathlib import Path


def running(pid: int, start: str | None = None) -> bool | None:
    """Whether process ``pid`` runs; a zombie (ended, not yet reaped by its parent) does not. ``start``: its start
    time as :func:`start_time` read it then, which tells a reused pid from it. None on Windows, where
    ``os.kill(pid, 0)`` would end the process instead of asking: the caller decides what an unknown means."""
    if os.name == "nt":
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's: it exists
        return True
    try:
        fields = _stat_fields(pid)
    except OSError:  # no /proc: os.kill's answer is all there is
        return True
    if start is not None and fields[19] != start:
        return False  # another process got the pid
    return fields[0] != "Z"


def start_time(pid: int) -> str | None:
    """The process's start time (Linux /proc), which tells a reused pid from it; None where there is no /proc."""
    try:
        return _stat_fields(pid)[19]
    except OSError:
        return None


def _stat_fields(pid: int) -> list[str]:
    """/proc/PID/stat's fields after the command name (which may hold spaces and parentheses)."""
    return Path(f"/proc/{pid}/stat").read_text(encoding="utf-8").rsplit(")", 1)[-1].split()

"""biom3d.core.processes: whether a process runs, asked without touching it (the GUI's jobs, io's loader
workers)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from biom3d.core import processes

pytestmark = pytest.mark.skipif(os.name == "nt", reason="POSIX: on Windows running() answers None")


def test_a_running_process_runs_and_its_start_time_tells_it_from_a_reused_pid():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        start = processes.start_time(child.pid)
        assert start is not None and processes.running(child.pid, start) is True
        assert processes.running(child.pid) is True
        assert processes.running(child.pid, str(int(start) + 1)) is False  # another process with that pid
    finally:
        child.kill()
        child.wait()


def test_an_ended_process_does_not_run_reaped_or_not():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)  # ended, not reaped: a zombie
    assert processes.running(child.pid) is False
    child.wait()
    assert processes.running(child.pid) is False
    assert processes.start_time(child.pid) is None

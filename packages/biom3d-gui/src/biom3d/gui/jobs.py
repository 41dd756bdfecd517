"""Jobs: `biom3d` commands the server runs in processes of their own, one at a time per device (lane) by
default, the others queued.

A job is a process group (``start_new_session``): closing the browser or stopping the server does not stop
it, and stopping it stops its data-loader workers too (SIGINT, then SIGTERM, then SIGKILL; on Windows, where
this is untested, Ctrl-Break then TerminateProcess). Every job is a
JSON record in ``<state>/jobs/`` written atomically, with its output in ``<id>.log``, so a restarted server
shows what ran, adopts the jobs still running (checked by pid and process start time, so a reused pid is not
mistaken for one) and starts the queued ones. One server process at a time holds a runs folder's jobs (a lock
file): a second would start the queued jobs the first starts too, and rewrite its records.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from biom3d.core import processes
from biom3d.core.atomic import atomic_write_text
from biom3d.core.errors import InputError

ACTIVE = ("queued", "running")
WINDOWS = os.name == "nt"  # jobs are followed through their Popen objects only (none adopted after a restart)
STOP_GRACE_S = 15.0  # after SIGINT (KeyboardInterrupt: a clean stop), then SIGTERM, then SIGKILL
TAIL_BYTES = 64 * 1024


@dataclass
class Job:
    id: str
    kind: str  # train, resume, predict, eval
    title: str
    argv: list[str]
    lane: str  # the device it needs; one job per lane at a time (jobs_per_lane)
    state: str = "queued"  # queued, running, done, failed, stopped, cancelled, interrupted, ended
    created: float = field(default_factory=time.time)
    started: float | None = None
    ended: float | None = None
    returncode: int | None = None
    pid: int | None = None
    pid_start: str | None = None
    stop_requested: bool = False
    target: dict[str, Any] = field(default_factory=dict)  # what it works on: run id, output folder, csv...
    message: str = ""

    def public(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("pid_start")
        return data


class JobManager:
    """Starts, watches, stops and remembers jobs; thread-safe (routes run in a thread pool)."""

    def __init__(self, state_dir: Path, *, jobs_per_lane: int = 1, env: dict[str, str] | None = None,
                 cwd: Path | None = None, on_end: Callable[[Job], None] | None = None):
        self.folder = Path(state_dir) / "jobs"
        self.folder.mkdir(parents=True, exist_ok=True)
        self.jobs_per_lane = max(1, jobs_per_lane)
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONIOENCODING": "utf-8", **(env or {})}
        self.env.pop("BIOM3D_GUI_TOKEN", None)  # a job has no use for the server's token
        self.cwd = Path(cwd or Path.cwd())
        self.on_end = on_end
        self._lock = threading.RLock()
        self._jobs: dict[str, Job] = {}
        self._procs: dict[str, subprocess.Popen] = {}
        self._claim = _claim_folder(self.folder)
        self._recover()

    def close(self) -> None:
        """Let another server take these jobs (the jobs themselves go on)."""
        claim, self._claim = self._claim, None
        if claim is not None:
            _release_folder(claim)

    # -- queries -------------------------------------------------------------------------------------------
    def list(self) -> list[Job]:
        with self._lock:
            return sorted(self._jobs.values(), key=lambda j: j.created, reverse=True)

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)

    def active_for(self, key: str, value: str) -> Job | None:
        """The queued or running job whose target has ``key == value`` (e.g. the run it trains)."""
        with self._lock:
            return next((j for j in self.list() if j.state in ACTIVE and j.target.get(key) == value), None)

    def last_for(self, key: str, value: str) -> Job | None:
        with self._lock:
            return next((j for j in self.list() if j.target.get(key) == value), None)

    def log_path(self, job: Job) -> Path:
        return self.folder / f"{job.id}.log"

    def tail(self, job: Job, lines: int = 40) -> list[str]:
        """The last lines of the job's output; progress bars (``\\r`` updates) keep their latest state."""
        path = self.log_path(job)
        try:
            with open(path, "rb") as f:
                f.seek(max(0, path.stat().st_size - TAIL_BYTES))
                text = f.read().decode("utf-8", errors="replace")
        except OSError:
            return []
        out = []
        for line in text.split("\n"):
            shown = [part for part in line.split("\r") if part.strip()]  # what a terminal would show last
            if shown:
                out.append(shown[-1].rstrip())
        return out[-lines:]

    # -- actions -------------------------------------------------------------------------------------------
    def submit(self, kind: str, argv: Sequence[str], *, lane: str, title: str,
               target: dict[str, Any] | None = None, unique: str | None = None) -> Job:
        """Queue a job; with ``unique`` (a key of ``target``), refused while an active job has the same value
        there: two requests at once (a double click) both pass a route's own check, not this one."""
        job = Job(id=new_id(), kind=kind, title=title, argv=[str(a) for a in argv], lane=lane,
                  target=dict(target or {}))
        with self._lock:
            other = self.active_for(unique, job.target[unique]) if unique else None
            if other is not None:
                raise InputError(f"{unique} {job.target[unique]!r} has a job {other.state} already ({other.title}, "
                                 f"{other.id}); wait for it or stop it first")
            self._jobs[job.id] = job
            self._save(job)
            self._schedule()
        return job

    def stop(self, job_id: str) -> Job:
        with self._lock:
            job = self._jobs[job_id]
            if job.state == "queued":
                job.state, job.ended, job.message = "cancelled", time.time(), "cancelled before it started"
                self._save(job)
                return job
            if job.state != "running" or job.stop_requested:
                return job
            job.stop_requested = True
            self._save(job)
        threading.Thread(target=self._terminate, args=(job,), daemon=True).start()
        return job

    def shutdown(self) -> list[Job]:
        """Nothing is stopped (jobs outlive the server); returns the running ones to mention."""
        with self._lock:
            return [j for j in self._jobs.values() if j.state == "running"]

    # -- internals -----------------------------------------------------------------------------------------
    def _schedule(self) -> None:
        with self._lock:
            busy: dict[str, int] = {}
            for j in self._jobs.values():
                if j.state == "running":
                    busy[j.lane] = busy.get(j.lane, 0) + 1
            for job in sorted(self._jobs.values(), key=lambda j: j.created):
                if job.state == "queued" and busy.get(job.lane, 0) < self.jobs_per_lane:
                    self._start(job)
                    busy[job.lane] = busy.get(job.lane, 0) + 1

    def _start(self, job: Job) -> None:
        log = open(self.log_path(job), "ab")  # noqa: SIM115  (the child owns it; closed once it started)
        try:
            group = {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP} if WINDOWS else {"start_new_session": True}
            proc = subprocess.Popen(job.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    cwd=self.cwd, env=self.env, **group)
        except OSError as exc:
            job.state, job.ended, job.message = "failed", time.time(), f"could not start: {exc}"
            self._save(job)
            return
        finally:
            log.close()
        job.state, job.started, job.pid = "running", time.time(), proc.pid
        job.pid_start = processes.start_time(proc.pid)
        self._procs[job.id] = proc
        self._save(job)
        threading.Thread(target=self._wait, args=(job, proc), daemon=True).start()

    def _wait(self, job: Job, proc: subprocess.Popen) -> None:
        code = proc.wait()
        self._ended(job, code)

    def _watch_adopted(self, job: Job) -> None:
        while _alive(job.pid, job.pid_start):
            time.sleep(1.0)
        self._ended(job, None)

    def _ended(self, job: Job, code: int | None) -> None:
        with self._lock:
            self._procs.pop(job.id, None)
            job.ended, job.returncode = time.time(), code
            if job.stop_requested:
                job.state, job.message = "stopped", "stopped on request"
            elif code is None:
                job.state, job.message = "ended", "it ended while another server instance watched it; exit code unknown"
            elif code == 0:
                job.state = "done"
            else:
                job.state = "failed"
                job.message = _error_paragraph(self.tail(job, 60)) or f"exit code {code}"
            self._save(job)
            self._schedule()
        if self.on_end is not None:
            with contextlib.suppress(Exception):
                self.on_end(job)

    def _terminate(self, job: Job) -> None:
        if WINDOWS:  # no process groups to signal: Ctrl-Break to the job's console group, then end it
            proc = self._procs.get(job.id)
            if proc is not None:
                with contextlib.suppress(OSError):
                    proc.send_signal(signal.CTRL_BREAK_EVENT)  # type: ignore[attr-defined]
                try:
                    proc.wait(STOP_GRACE_S)
                except subprocess.TimeoutExpired:
                    proc.kill()
            return
        for sig, wait in ((signal.SIGINT, STOP_GRACE_S), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            if not _alive(job.pid, job.pid_start):
                break
            if _ignores(job.pid, sig):  # e.g. SIGINT, for a server started in the background (`... &`)
                continue
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(job.pid, sig)  # the job leads its own process group (start_new_session)
            deadline = time.time() + wait
            while time.time() < deadline and _alive(job.pid, job.pid_start):
                time.sleep(0.1)
        with contextlib.suppress(ProcessLookupError, PermissionError):  # workers left behind by a SIGKILL
            os.killpg(job.pid, signal.SIGKILL)

    def _save(self, job: Job) -> None:
        atomic_write_text(self.folder / f"{job.id}.json", json.dumps(asdict(job), indent=1))

    def _recover(self) -> None:
        """Jobs of an earlier server: running ones still alive are adopted, dead ones are interrupted, queued
        ones are queued again."""
        for path in sorted(self.folder.glob("*.json")):
            try:
                job = Job(**json.loads(path.read_text(encoding="utf-8")))
            except (OSError, ValueError, TypeError):
                continue
            self._jobs[job.id] = job
            if job.state == "running":
                if _alive(job.pid, job.pid_start):
                    threading.Thread(target=self._watch_adopted, args=(job,), daemon=True).start()
                else:
                    job.state, job.ended = "interrupted", job.ended or time.time()
                    job.message = "its process ended while no server watched it (see the run's state)"
                    self._save(job)
        self._schedule()


def new_id() -> str:
    """A job's (or an output's) id: its time, readable, and random hex, so that two in one second differ."""
    return time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]


# folder -> [open lock file, how many managers of this process use it]: flock is per open file, so a second
# manager in the same process (a test, an embedding app) shares the claim instead of refusing itself
_CLAIMS: dict[Path, list] = {}
_CLAIMS_LOCK = threading.Lock()


def _claim_folder(folder: Path) -> Path | None:
    """Hold ``folder/.server.lock`` for this process, or refuse naming the server that holds it."""
    if WINDOWS:  # no flock; one server per runs folder is then the user's to keep
        return None
    import fcntl

    folder = folder.resolve()
    with _CLAIMS_LOCK:
        if folder in _CLAIMS:
            _CLAIMS[folder][1] += 1
            return folder
        handle = open(folder / ".server.lock", "a+", encoding="utf-8")  # noqa: SIM115  (held for the server's life)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            runs = folder.parent.parent
            raise InputError(f"another biom3d gui ({holder}) serves the runs folder {runs}: open its address, or stop "
                             "it first; a second server would start its queued jobs twice. Give this one another "
                             "--runs-dir to keep both") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}")
        handle.flush()
        _CLAIMS[folder] = [handle, 1]
        return folder


def _release_folder(folder: Path) -> None:
    with _CLAIMS_LOCK:
        claim = _CLAIMS.get(folder)
        if claim is None:
            return
        claim[1] -= 1
        if claim[1] == 0:
            del _CLAIMS[folder]
            claim[0].close()  # closing the file releases the lock


def _alive(pid: int | None, start: str | None) -> bool:
    # Windows (unknown): only our own children are followed, through their Popen objects
    return bool(pid) and processes.running(pid, start) is True


def _ignores(pid: int | None, sig: int) -> bool:
    """Whether process ``pid`` ignores ``sig`` (Linux: the SigIgn mask of /proc/PID/status)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text(encoding="utf-8").splitlines():
            if line.startswith("SigIgn:"):
                return bool(int(line.split()[1], 16) >> (sig - 1) & 1)
    except (OSError, ValueError):
        pass
    return False


def _error_paragraph(lines: list[str]) -> str:
    """What the job said last about its failure: from the last ``error:`` line (the CLI's one paragraph) on."""
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].startswith("error:"):
            return " ".join(line.strip() for line in lines[i:]).removeprefix("error:").strip()
    return lines[-1].strip() if lines else ""

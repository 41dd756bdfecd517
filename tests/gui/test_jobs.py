"""Jobs as processes: one at a time per device, the others queued; a stop ends the whole process group; a
failure keeps the command's own error paragraph; a new server adopts what still runs and queues what waited."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from biom3d.gui.jobs import JobManager, _alive

SLEEP = [sys.executable, "-c", "import time; time.sleep(60)"]
# a job with a worker process of its own (a data loader would be one): stopping the job must stop it too
WITH_CHILD = [sys.executable, "-c", "import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', "
              "'import time; time.sleep(60)']); print('child', p.pid, flush=True); time.sleep(60)"]


def _until(check, timeout=20.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return False


def test_one_job_per_lane_the_others_queue(tmp_path):
    jobs = JobManager(tmp_path, jobs_per_lane=1)
    first = jobs.submit("train", SLEEP, lane="cpu", title="first")
    second = jobs.submit("train", SLEEP, lane="cpu", title="second")
    elsewhere = jobs.submit("train", SLEEP, lane="cuda:0", title="on the GPU")
    try:
        assert (first.state, second.state, elsewhere.state) == ("running", "queued", "running")
        jobs.stop(first.id)
        assert _until(lambda: second.state == "running")
        assert first.state == "stopped" and first.message == "stopped on request"
        cancelled = jobs.submit("train", SLEEP, lane="cpu", title="third")
        assert jobs.stop(cancelled.id).state == "cancelled" and cancelled.pid is None
    finally:
        for job in (second, elsewhere):
            jobs.stop(job.id)
        assert _until(lambda: second.state == elsewhere.state == "stopped")


def test_stop_ends_the_process_group_with_its_workers(tmp_path):
    jobs = JobManager(tmp_path)
    job = jobs.submit("train", WITH_CHILD, lane="cpu", title="with a child")
    assert _until(lambda: any(line.startswith("child ") for line in jobs.tail(job)))
    child = int(next(line for line in jobs.tail(job) if line.startswith("child ")).split()[1])
    assert _alive(job.pid, job.pid_start) and _alive(child, None)
    jobs.stop(job.id)
    assert _until(lambda: job.state == "stopped")
    assert _until(lambda: not _alive(child, None)), "the job's worker outlived the stop"
    assert job.returncode is not None


def test_a_failed_job_keeps_the_commands_error_paragraph(tmp_path):
    jobs = JobManager(tmp_path)
    failing = [sys.executable, "-c", "import sys; print('working...'); print('error: the masks folder is empty;\\n"
               "  choose another', file=sys.stderr); sys.exit(2)"]
    job = jobs.submit("train", failing, lane="cpu", title="fails")
    assert _until(lambda: job.state == "failed")
    assert job.returncode == 2 and job.message == "the masks folder is empty; choose another"
    done = jobs.submit("eval", [sys.executable, "-c", "print('fine')"], lane="eval", title="works")
    assert _until(lambda: done.state == "done") and jobs.tail(done) == ["fine"]


def test_progress_bars_show_their_last_state_in_the_tail(tmp_path):
    jobs = JobManager(tmp_path)
    bar = "import sys; sys.stderr.write('epoch 1:  10%\\repoch 1:  50%\\repoch 1: 100%\\r      \\rINFO: epoch 1 done\\n')"
    job = jobs.submit("train", [sys.executable, "-c", bar], lane="cpu", title="bar")
    assert _until(lambda: job.state == "done")
    assert jobs.tail(job) == ["INFO: epoch 1 done"]


# A server that dies: its jobs run in sessions of their own and outlive it, and its records say what it last saw.
OLD_SERVER = """
import json, sys, time
from biom3d.gui.jobs import JobManager
sleep = [sys.executable, "-c", "import time; time.sleep(60)"]
old = JobManager(sys.argv[1], jobs_per_lane=1)
running = old.submit("train", sleep, lane="cpu", title="survives the server")
waiting = old.submit("train", [sys.executable, "-c", "print('late')"], lane="cpu", title="was queued")
lost = old.submit("train", sleep, lane="gpu", title="killed while no server watched")
print(json.dumps({j.title: [j.id, j.pid, j.state] for j in (running, waiting, lost)}), flush=True)
time.sleep(60)
"""


def test_a_new_server_adopts_running_jobs_queues_waiting_ones_and_marks_lost_ones(tmp_path):
    server = subprocess.Popen([sys.executable, "-c", OLD_SERVER, str(tmp_path)], stdout=subprocess.PIPE,
                              text=True, encoding="utf-8", errors="replace")
    try:
        seen = json.loads(server.stdout.readline())
    finally:
        server.kill()  # the old server dies at once: no thread of its records what happens next
        server.wait()
    (running, running_pid, running_state), (waiting, _, waiting_state), (lost, lost_pid, lost_state) = (
        seen["survives the server"], seen["was queued"], seen["killed while no server watched"])
    assert running_state == lost_state == "running" and waiting_state == "queued"
    os.killpg(lost_pid, signal.SIGKILL)  # ends while no server watches: its record still says "running"
    assert _until(lambda: not _alive(lost_pid, None))

    new = JobManager(tmp_path, jobs_per_lane=1)
    adopted, lost_again, queued = new.get(running), new.get(lost), new.get(waiting)
    assert adopted.state == "running" and adopted.pid == running_pid
    assert lost_again.state == "interrupted" and "no server watched" in lost_again.message
    assert queued.state == "queued"  # the adopted job holds the lane
    new.stop(adopted.id)  # an adopted job can be stopped by the new server
    assert _until(lambda: adopted.state == "stopped")
    assert _until(lambda: queued.state == "done") and new.tail(queued) == ["late"]  # the lane is free: it ran


def test_a_job_that_ignores_sigint_is_stopped_without_waiting_the_grace_period(tmp_path):
    from biom3d.gui.jobs import STOP_GRACE_S

    jobs = JobManager(tmp_path)
    deaf = [sys.executable, "-c", "import signal, time; signal.signal(signal.SIGINT, signal.SIG_IGN); "
            "print('ready', flush=True); time.sleep(60)"]
    job = jobs.submit("train", deaf, lane="cpu", title="ignores SIGINT")
    assert _until(lambda: jobs.tail(job) == ["ready"])
    start = time.time()
    jobs.stop(job.id)
    assert _until(lambda: job.state == "stopped")
    # well under the grace period (a loaded machine may take seconds), which a SIGINT first would have used up
    assert time.time() - start < STOP_GRACE_S - 2 and job.returncode == -signal.SIGTERM


HOLDER = """
import sys, time
from biom3d.gui.jobs import JobManager
JobManager(sys.argv[1])
print("holding", flush=True)
time.sleep(60)
"""


def test_a_second_server_process_on_the_same_runs_folder_is_refused(tmp_path):
    """Both would start the queued jobs (each holds them in memory), so a queued training would run twice."""
    import pytest

    from biom3d.core.errors import InputError

    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                              encoding="utf-8", errors="replace")
    try:
        assert holder.stdout.readline().strip() == "holding"
        with pytest.raises(InputError, match=f"another biom3d gui \\(pid {holder.pid}\\) serves the runs folder"):
            JobManager(tmp_path)
    finally:
        holder.kill()
        holder.wait()
    jobs = JobManager(tmp_path)  # its holder gone (even killed), the folder is free
    same_process = JobManager(tmp_path)  # a second manager of this process shares the claim
    jobs.close()
    same_process.close()


def test_two_submits_for_one_run_at_once_start_one_job(tmp_path):
    import threading

    import pytest

    from biom3d.core.errors import InputError

    jobs = JobManager(tmp_path)
    outcomes, gate = [], threading.Barrier(4)

    def submit():
        gate.wait()
        try:
            outcomes.append(jobs.submit("train", SLEEP, lane="cpu", title="twice", target={"run": "r"}, unique="run"))
        except InputError as exc:
            outcomes.append(exc)

    threads = [threading.Thread(target=submit) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    started = [o for o in outcomes if not isinstance(o, Exception)]
    try:
        assert len(started) == 1 and all("has a job running already" in str(o) for o in outcomes if o not in started)
        with pytest.raises(InputError, match="run 'r' has a job"):
            jobs.submit("resume", SLEEP, lane="cuda:0", title="other lane", target={"run": "r"}, unique="run")
    finally:
        jobs.stop(started[0].id)
        assert _until(lambda: started[0].state == "stopped")

"""Issue 12: a rank killed mid-training makes the other one stop with a clear error within the collective
timeout (train.ddp_timeout) instead of hanging, and the same command line then continues the run with two ranks
under torchrun. The ranks are started as srun starts them (RANK, WORLD_SIZE, MASTER_ADDR/PORT, no torchrun
agent), so that nothing but biom3d ends the surviving rank."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

import torch
import yaml

from tests.distributed.conftest import child_env, log_rows, torchrun

TIMEOUT = 20  # train.ddp_timeout here: how long the surviving rank waits for the killed one


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_killed_rank_ends_the_job_with_a_clear_error_and_the_same_command_resumes_it(prepared, tmp_path):
    run, config = tmp_path / "run", prepared.config.with_name("killed.yaml")  # beside it: `preprocessed: .`
    settings = yaml.safe_load(prepared.config.read_text(encoding="utf-8"))
    settings["train"]["ddp_timeout"] = TIMEOUT
    config.write_text(yaml.safe_dump(settings), encoding="utf-8")
    args = ["train", str(config), "--resume", str(run)]  # a new run in `run`, or its continuation
    env = child_env(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), WORLD_SIZE="2")
    logs = [tmp_path / f"rank-{r}.log" for r in range(2)]
    ranks = [subprocess.Popen([sys.executable, "-m", "biom3d.cli", *args, "--epochs", "50"],
                              env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
                              stdout=open(logs[r], "w", encoding="utf-8"), stderr=subprocess.STDOUT)  # noqa: SIM115
             for r in range(2)]
    try:
        deadline = time.monotonic() + 180
        while not (run / "checkpoints" / "last.pt").is_file():  # an epoch is done: the ranks are training
            assert all(p.poll() is None for p in ranks), logs[0].read_text(encoding="utf-8")[-3000:]
            assert time.monotonic() < deadline, "no checkpoint after 180 s"
            time.sleep(0.1)
        time.sleep(0.3)
        ranks[1].kill()
        killed = time.monotonic()
        ranks[0].wait(timeout=TIMEOUT + 60)
        waited = time.monotonic() - killed
    finally:
        for p in ranks:
            p.kill()
            p.wait()
    out = logs[0].read_text(encoding="utf-8", errors="replace")
    assert ranks[0].returncode == 1, out[-3000:]
    # the timeout, plus the epoch-end work rank 0 may have been in (curves, snapshots) and its exit
    assert waited < TIMEOUT + 20, f"rank 0 took {waited:.0f} s to give up"
    assert "error: rank 0 of 2: the other ranks stopped answering" in out
    assert f"train.ddp_timeout = {TIMEOUT} s" in out and f"biom3d train --resume {run}" in out
    assert "Traceback" not in out

    done = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["epoch"] + 1
    before = log_rows(run)[:done]
    proc = torchrun([*args, "--epochs", str(done + 1)])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert f"resuming {run} from last.pt (epoch {done} done)" in proc.stderr
    rows = log_rows(run)
    assert [int(r["epoch"]) for r in rows] == list(range(done + 1)) and rows[:done] == before
    sessions = json.loads((run / "distributed.json").read_text(encoding="utf-8"))["sessions"]
    assert [(s["world_size"], s["from_epoch"]) for s in sessions] == [(2, 0), (2, done)]

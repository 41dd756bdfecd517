"""A finished two-rank job exits cleanly: biom3d's own collectives never run on the default process group, which
DDP keeps alive until the interpreter ends (torch 2.13), and the groups they run on end with the session.

Before, run_on_main, gather and mean_over_ranks used the default group; a gloo thread still releasing a tensor of
the last of them at exit needed the GIL during finalisation, and the rank aborted after a finished job
("terminate called without an active exception"): 17 of 50 jobs on 2 busy cores. The abort is a race, too rare
for a test to catch by repetition, so this test checks the two facts that rule it out."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.distributed.conftest import child_env

# Counts this process's threads (Linux). A thread that was joined can stay listed a moment: settled() waits for the
# count to come down to a target, up to 2 s, so a thread that does not end still fails the test.
THREADS = r'''
import os, time
threads = lambda: len(os.listdir("/proc/self/task"))


def settled(target):
    t = time.monotonic()
    while threads() > target and time.monotonic() - t < 2:
        time.sleep(0.01)
    return threads()
'''

SCRIPT = THREADS + r'''
import json, sys
import torch
import torch.distributed as dist
from biom3d.core import distributed

calls = []  # (function, which group) of every collective biom3d.core.distributed makes


def recorded(name):
    real = getattr(dist, name)

    def call(*args, **kwargs):
        if sys._getframe(1).f_globals.get("__name__") == "biom3d.core.distributed":
            group = kwargs.get("group")
            calls.append((name, "default" if group is None or group is dist.group.WORLD else f"own-{id(group)}"))
        return real(*args, **kwargs)
    return call


for name in ("broadcast_object_list", "all_gather_object", "all_reduce", "barrier"):
    setattr(dist, name, recorded(name))

torch.set_num_threads(1)
device = torch.device("cpu")
before = threads()
with distributed.session(device, 20) as world:
    joined = threads()  # the default group's threads
    model = distributed.wrap(torch.nn.Conv3d(1, 2, 3), device)
    model(torch.randn(1, 1, 6, 6, 6)).sum().backward()
    distributed.run_on_main(lambda: "stage", stage=True)
    distributed.run_on_main(lambda: "step")
    ranks = distributed.gather(world.rank)
    mean = distributed.mean_over_ranks({"x": (float(world.rank), 1)})["x"]
    distributed.wait_for_all()
    during = threads()
after = settled(joined)
print("RESULT " + json.dumps({"calls": calls, "ranks": ranks, "mean": mean, "before": before, "joined": joined,
                              "during": during, "after": after}))
'''


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads in /proc/self/task (Linux)")
def test_biom3ds_collectives_use_groups_of_their_own_that_end_with_the_session(tmp_path):
    for r in _two_ranks(SCRIPT, tmp_path):
        assert r["ranks"] == [0, 1] and r["mean"] == 0.5  # the collectives did their work
        names = [name for name, _ in r["calls"]]
        assert sorted(set(names)) == ["all_gather_object", "all_reduce", "barrier", "broadcast_object_list"]
        assert all(group != "default" for _, group in r["calls"]), r["calls"]
        # a stage's collectives and a step's differ in timeout, hence in group
        stage = {g for (name, g) in r["calls"] if name == "barrier"}
        step = {g for (name, g) in r["calls"] if name in ("all_gather_object", "all_reduce")}
        assert len(stage) == len(step) == 1 and stage != step
        broadcasts = [g for (name, g) in r["calls"] if name == "broadcast_object_list"]
        assert broadcasts == [*stage, *step]  # run_on_main(stage=True), then a step's run_on_main
        # our groups' threads ran during the session and ended with it; what stays is DDP's default group
        assert r["during"] > r["joined"] and r["after"] <= r["joined"], r


CALLERS = THREADS + r'''
import atexit, json
seen = {}
# registered first, so it runs last at exit: after biom3d's own handler
atexit.register(lambda: print("RESULT " + json.dumps({**seen, "at_exit": settled(seen["before"])}), flush=True))

import torch.distributed as dist
from biom3d.core import distributed

seen["before"] = threads()
dist.init_process_group("gloo")  # the caller's own process group: biom3d's session leaves it alone
with distributed.session(None, 20):
    seen["ranks"] = distributed.gather(dist.get_rank())
dist.destroy_process_group()
seen["destroyed"] = threads()  # our group outlives the caller's session, not the process
'''


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads in /proc/self/task (Linux)")
def test_groups_of_ours_in_a_callers_process_group_end_before_the_interpreter(tmp_path):
    for r in _two_ranks(CALLERS, tmp_path):
        assert r["ranks"] == [0, 1]
        assert r["destroyed"] > r["before"] and r["at_exit"] == r["before"], r


def _two_ranks(code: str, tmp_path) -> list[dict]:
    """Run ``code`` on two ranks under torchrun; what each printed after "RESULT "."""
    script = tmp_path / "job.py"
    script.write_text(code, encoding="utf-8")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(script)], env=child_env(), capture_output=True, text=True, encoding="utf-8",
                          errors="replace", timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    decoder = json.JSONDecoder()  # the ranks share stdout: one's line may run into the other's
    results = [decoder.raw_decode(part)[0] for part in proc.stdout.split("RESULT ")[1:]]
    assert len(results) == 2
    return results

"""Shared fixtures of the GUI tests: a tiny real dataset (tests/e2e's), an app with a token, a client, and one
real tiny training started through the API (2 epochs of 1 iteration, a CPU-sized network, 16-voxel patches)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

TOKEN = "test-token-0123456789"
#: the Train tab's form for a training that takes seconds on a CPU
TINY_FORM = {"epochs": 2, "iters_per_epoch": 1, "val_iters": 1, "batch_size": 2, "workers": 0, "device": "cpu",
             "small": True, "max_dim": 16}


@pytest.fixture(scope="session")
def data(tmp_path_factory) -> Path:
    """data/train/{images,masks}/case0..2.tif and data/test/{images,masks}/case0.tif (16 x 24 x 24)."""
    from tests.e2e.conftest import make_dataset

    return make_dataset(tmp_path_factory.mktemp("gui-data") / "data", n_train=3, n_test=1)


def make_client(root: Path, runs: Path, token: str | None = TOKEN, **kw):
    from fastapi.testclient import TestClient

    from biom3d.gui.server import create_app

    app = create_app([root], token, runs, **kw)
    headers = {"X-Biom3d-Token": token} if token else {}
    return TestClient(app, headers=headers)


@pytest.fixture
def client(data, tmp_path):
    with make_client(data, tmp_path / "runs") as c:
        yield c


def wait_job(client, job_id: str, timeout: float = 300) -> dict:
    """Poll a job until it is no longer queued or running; its last detail."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = client.get(f"/api/jobs/{job_id}").json()
        if job["state"] not in ("queued", "running"):
            return job
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} still {job['state']} after {timeout} s: {job.get('log')}")


@pytest.fixture(scope="session")
def trained(data, tmp_path_factory):
    """(client, run id, runs folder) of a real training the API started and finished."""
    runs = tmp_path_factory.mktemp("gui-runs")
    with make_client(data, runs) as c:
        form = {"name": "tiny", "images": str(data / "train" / "images"), "masks": str(data / "train" / "masks"),
                "num_classes": 1, **TINY_FORM}
        answer = c.post("/api/train", json={"form": form})
        assert answer.status_code == 200, answer.text
        job = wait_job(c, answer.json()["job"]["id"])
        assert job["state"] == "done", "\n".join(job["log"])
        yield c, answer.json()["run"], runs

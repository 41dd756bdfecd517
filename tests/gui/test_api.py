"""Every route of the GUI's API on real data: scan, auto-configuration, configs (and their refusals), preview,
then a real tiny training started through the API: runs, curves, snapshots, resume, stop, predict (one run,
an ensemble), downloads, evaluation, and what a restarted server finds."""

from __future__ import annotations

import io
import shutil
import zipfile

import numpy as np
import pytest
import tifffile
import yaml
from PIL import Image

from biom3d.core.builtins.autoconfig import auto_config
from tests.gui.conftest import TINY_FORM, make_client, wait_job


def _form(data, **changes):
    return {"name": "run1", "images": str(data / "train" / "images"), "masks": str(data / "train" / "masks"),
            "num_classes": 1, **TINY_FORM, **changes}


def _fields(answer) -> dict[str, str]:
    return {p["field"] or p["path"]: p["message"] for p in answer.json()["problems"]}


# -- info, scan, auto-configuration --------------------------------------------------------------------------
def test_info_lists_folders_stacks_and_devices(client, data, tmp_path):
    info = client.get("/api/info").json()
    assert info["roots"] == [{"name": "data", "path": str(data.resolve())},
                             {"name": "runs", "path": str((tmp_path / "runs").resolve())}]
    assert info["stacks"][0]["id"] == "models/paper" and {"auto", "cpu"} <= set(info["devices"])
    assert info["token_required"] is True


def test_scan_reports_files_corrections_fingerprint_and_plan(client, data):
    answer = client.post("/api/scan", json={"images": str(data / "train" / "images"), "masks": str(data / "train" / "masks")})
    result = answer.json()
    assert answer.status_code == 200 and result["problems"] == []
    assert [f["key"] for f in result["files"]] == ["case0", "case1", "case2"]
    assert all(f["shape"] == [16, 24, 24] and f["spacing"] == [2.0, 0.5, 0.5] and f["spacing_unit"] == "µm" and f["channels"] == 1
               for f in result["files"])
    assert len(result["notes"]) == 3 and "relabelled" in result["notes"][0]  # the 0/255 masks
    assert result["fingerprint"]["median_shape"] == [16.0, 24.0, 24.0] and result["fingerprint"]["num_images"] == 3
    assert result["fingerprint"]["spacing_unit"] == "µm"
    assert result["plan"] == auto_config([16, 24, 24], num_images=3).as_dict()
    assert result["stack"] == "models/paper"


def test_scan_reports_unpaired_files_and_bad_masks(client, data, tmp_path):
    images, masks = tmp_path / "share" / "images", tmp_path / "share" / "masks"
    shutil.copytree(data / "train" / "images", images)
    shutil.copytree(data / "train" / "masks", masks)
    (masks / "case2.tif").unlink()
    with make_client(tmp_path / "share", tmp_path / "runs2") as c:
        result = c.post("/api/scan", json={"images": str(images), "masks": str(masks)}).json()
        assert result["plan"] is None and "case2.tif has no mask" in result["problems"][0]
        tifffile.imwrite(masks / "case2.tif", np.zeros((16, 24, 24), np.uint8))
        tifffile.imwrite(masks / "case1.tif", np.zeros((8, 24, 24), np.uint8))  # not the image's shape
        result = c.post("/api/scan", json={"images": str(images), "masks": str(masks)}).json()
        assert result["plan"] is None and any("case1" in p for p in result["problems"])
        assert [f.get("problem") is not None for f in result["files"]] == [False, True, False]


def test_autoconfig_preview_and_an_edited_patch(client):
    plan = client.post("/api/autoconfig", json={"median_shape": [60, 256, 256], "num_images": 30}).json()
    assert plan == auto_config([60, 256, 256], num_images=30).as_dict()
    edited = client.post("/api/autoconfig", json={"median_shape": [60, 256, 256], "patch_size": [50, 100, 100]}).json()
    assert edited["requested_patch_size"] == [50, 100, 100]
    assert edited["patch_size"] == [56, 112, 112] and edited["num_pools"] == [3, 4, 4]  # multiples of 2**pools
    assert all(p % 2**k == 0 for p, k in zip(edited["patch_size"], edited["num_pools"], strict=True))
    bad = client.post("/api/autoconfig", json={"median_shape": [60, 256, 256], "patch_size": [0, 64, 64]})
    assert bad.status_code == 422 and _fields(bad) == {"patch_size": "three positive sizes (D, H, W)"}


# -- configs -------------------------------------------------------------------------------------------------
def test_the_form_drafts_a_config_that_validates(client, data, tmp_path):
    text = client.post("/api/config/draft", json=_form(data)).json()["yaml"]
    raw = yaml.safe_load(text)
    assert raw["runs_dir"] == str((tmp_path / "runs").resolve()) and raw["train"]["epochs"] == 2
    assert raw["model"]["params"]["base_features"] == 8  # small: the stack's CPU-sized network
    assert client.post("/api/config/validate", json={"yaml": text}).json() == {"valid": True, "problems": []}


@pytest.mark.parametrize(("text", "path", "words"), [
    ("model: {name: 'os:system'}", "model.name", "unknown model 'os:system'"),
    ("model: {name: biom3d.core.builtins.trainer:build_trainer}", "model.name", "unknown model 'biom3d.core"),
    ("callbacks: [{name: 'subprocess:run'}]", "callbacks[", "unknown callback 'subprocess:run'"),
    ("train: !!python/object/apply:os.system ['touch PWNED']", "", "not valid YAML"),
    ("train: {epochs: 0}", "train.epochs", "greater than or equal to 1"),
    ("train: {epoch: 3}", "train.epoch", "did you mean 'epochs'"),
    ("train: {lr: abc}", "train.lr", "valid number"),
    ("runs_dir: /tmp/elsewhere", "runs_dir", "this server's runs folder"),
])
def test_yaml_that_names_code_or_holds_bad_values_is_refused_with_its_path(client, data, tmp_path, text, path, words):
    base = f"name: x\ndata: {{images: {data}/train/images, masks: {data}/train/masks}}\n"
    result = client.post("/api/config/validate", json={"yaml": base + text}).json()
    assert result["valid"] is False
    found = [p["message"] for p in result["problems"] if p["path"] == path or (path.endswith("[") and p["path"].startswith(path))]
    assert found and words in found[0], result["problems"]
    assert not (tmp_path / "PWNED").exists() and not (data / "PWNED").exists()


def test_data_outside_the_shared_folders_is_refused(client, data):
    result = client.post("/api/config/validate", json={"yaml": "name: x\ndata: {images: /etc, masks: /tmp}\n"}).json()
    messages = {p["path"]: p["message"] for p in result["problems"]}
    assert "outside the folders" in messages["data.images"] and "outside the folders" in messages["data.masks"]


def test_a_bad_form_is_refused_with_each_problem_next_to_its_field(client, data, tmp_path):
    answer = client.post("/api/train", json={"form": _form(data, epochs=0, lr="fast", batch_size=-1, name="bad name!")})
    assert answer.status_code == 422
    fields = _fields(answer)
    assert "greater than or equal to 1" in fields["epochs"] and "valid number" in fields["lr"]
    assert "greater than or equal to 1" in fields["batch_size"] and "name" in fields
    assert client.get("/api/jobs").json() == []  # nothing started
    assert client.post("/api/train", json={"form": _form(data, images="/etc")}).status_code == 422
    assert client.post("/api/train", json={"yaml": "model: {name: 'os:system'}"}).status_code == 422
    assert client.post("/api/train", json={}).status_code == 400
    assert client.post("/api/train", json={"form": {"nope": 1}}).status_code == 422


# -- preview -------------------------------------------------------------------------------------------------
def test_preview_renders_the_slice_with_the_most_foreground_and_tints_the_mask(client, data):
    image, mask = data / "train" / "images" / "case0.tif", data / "train" / "masks" / "case0.tif"
    answer = client.get("/api/preview", params={"image": str(image), "mask": str(mask)})
    assert answer.status_code == 200 and answer.headers["content-type"] == "image/png"
    labels = tifffile.imread(mask) > 0
    best = int(np.argmax(labels.reshape(16, -1).sum(1)))
    assert answer.headers["x-slice"] == str(best) and answer.headers["x-depth"] == "16"
    rgb = np.asarray(Image.open(io.BytesIO(answer.content)).convert("RGB")).astype(int)
    assert rgb.shape == (24, 24, 3)
    inside, outside = rgb[labels[best]], rgb[~labels[best]]
    assert (inside[:, 0] - inside[:, 2]).mean() > 40 and abs(outside[:, 0] - outside[:, 2]).max() == 0  # red on grey
    plain = client.get("/api/preview", params={"image": str(image), "slice": 99})
    assert plain.headers["x-slice"] == "15"  # clamped to the last slice
    other = client.get("/api/preview", params={"image": str(image), "mask": str(data / "test" / "masks" / "case0.tif")})
    assert other.status_code == 200  # same shape: allowed
    bad = client.get("/api/preview", params={"image": str(data / "train" / "images")})
    assert bad.status_code in (400, 500) and bad.json()["error"]


# -- a real run ----------------------------------------------------------------------------------------------
def test_the_trained_run_is_listed_with_its_curves_and_snapshots(trained):
    client, run, runs = trained
    listed = client.get("/api/runs").json()
    assert [r["id"] for r in listed] == [run]
    entry = listed[0]
    assert entry["status"] == "finished" and entry["epochs"] == 2 and entry["epochs_done"] == 2
    assert entry["has_checkpoint"] and not entry["resumable"] and entry["kind"] == "pipeline"
    detail = client.get(f"/api/runs/{run}").json()
    assert [row["epoch"] for row in detail["log"]] == [0, 1]
    assert all("train_loss" in row and "val_dice" in row for row in detail["log"])
    assert "val_dice" in detail["metrics"] and detail["best"]["val_dice"] == max(r["val_dice"] for r in detail["log"])
    assert detail["snapshots"] == ["epoch-0001.png", "epoch-0002.png"]
    writing = runs / run / "run" / "snapshots" / ".epoch-0003.png.a1b2c3d4.tmp.png"  # a snapshot being written
    writing.write_bytes(b"")
    try:  # listed, the page would ask for it after its rename: a 404 in the browser (seen in CI)
        assert client.get(f"/api/runs/{run}").json()["snapshots"] == ["epoch-0001.png", "epoch-0002.png"]
    finally:
        writing.unlink()
    snap = client.get(f"/api/runs/{run}/files/snapshots/epoch-0002.png")
    assert snap.status_code == 200 and snap.content[:8] == b"\x89PNG\r\n\x1a\n"
    assert client.get(f"/api/runs/{run}/files/curves.png").status_code == 200
    for name in ("checkpoints/best.pt", "..%2Fconfig.yaml", "snapshots%2F..%2F..%2Fx.png", "plugins.json"):
        assert client.get(f"/api/runs/{run}/files/{name}").status_code == 404, name
    assert client.get("/api/runs/nope").status_code == 404
    assert client.get("/api/runs/..%2F..").status_code == 404
    config = yaml.safe_load((runs / run / "run" / "config.yaml").read_text(encoding="utf-8"))
    assert config["train"]["epochs"] == 2 and config["patch_size"] == [16, 16, 16]  # max_dim 16 reached the plan
    job = client.get(f"/api/jobs/{detail['job']}").json()
    assert job["state"] == "done" and job["returncode"] == 0 and job["argv"][1:4] == ["-m", "biom3d.cli", "run"]
    assert any("epoch 2/2" in line for line in job["log"])


def test_a_name_in_use_is_refused(trained, data):
    client, run, _ = trained
    answer = client.post("/api/train", json={"form": _form(data, name=run)})
    assert answer.status_code == 422 and "exists already" in _fields(answer)["name"]


def test_a_name_the_server_keeps_for_itself_is_refused(client, data):
    for name in ("predictions", "evaluations", "uploads"):  # a run there would never be listed
        answer = client.post("/api/train", json={"form": _form(data, name=name)})
        assert answer.status_code == 422 and "folder this server keeps" in _fields(answer)["name"], name


def test_the_train_form_starts_a_cross_validation(client, data, tmp_path):
    import yaml

    from tests.gui.conftest import TINY_FORM

    form = {"name": "cv", "images": str(data / "train" / "images"), "masks": str(data / "train" / "masks"),
            "num_classes": 1, "cross_validation": True, **TINY_FORM}
    answer = client.post("/api/train", json={"form": form})
    assert answer.status_code == 200, answer.text
    job = wait_job(client, answer.json()["job"]["id"])
    assert job["state"] == "done", "\n".join(job["log"])
    folder = tmp_path / "runs" / "cv"
    assert yaml.safe_load((folder / "config.yaml").read_text(encoding="utf-8"))["cross_validation"] is True
    assert sorted(p.name for p in (folder / "folds").iterdir()) == ["fold-0", "fold-1"]  # 3 images: 2 folds
    assert sorted(p.name for p in (folder / "cv" / "predictions").iterdir()) == ["case0.tif", "case1.tif", "case2.tif"]
    listed = client.get("/api/runs/cv").json()
    assert listed["status"] == "finished" and listed["kind"] == "pipeline"


def test_a_training_that_fails_before_its_folder_exists_stays_listed_with_its_error(client, data):
    answer = client.post("/api/train", json={"form": _form(data, name="nodevice", device="cuda:7")})
    assert answer.status_code == 200, answer.text
    job = wait_job(client, answer.json()["job"]["id"], timeout=120)
    assert job["state"] == "failed" and "cuda" in job["message"].lower(), job
    assert not (client.app.state.gui.runs_dir / "nodevice").exists()
    listed = {r["id"]: r for r in client.get("/api/runs").json()}
    assert listed["nodevice"]["status"] == "failed" and listed["nodevice"]["message"] == job["message"]
    detail = client.get("/api/runs/nodevice").json()
    assert detail["status"] == "failed" and detail["message"] == job["message"] and detail["job_log"]


def test_resume_a_finished_run_only_with_more_epochs(trained):
    client, run, _ = trained
    refused = client.post(f"/api/runs/{run}/resume", json={})
    assert refused.status_code == 400 and "finished" in refused.json()["error"]
    answer = client.post(f"/api/runs/{run}/resume", json={"epochs": 3})
    assert answer.status_code == 200
    assert client.get(f"/api/runs/{run}").json()["status"] in ("queued", "running")
    job = wait_job(client, answer.json()["job"]["id"])
    assert job["state"] == "done", job["log"]
    assert job["argv"][3:] == ["run", "--resume", str(client.app.state.gui.runs_dir / run), "--epochs", "3"]
    detail = client.get(f"/api/runs/{run}").json()
    assert detail["epochs"] == 3 and detail["epochs_done"] == 3 and detail["status"] == "finished"


def test_predict_with_an_ensemble_then_download_and_evaluate(trained, data, tmp_path):
    client, run, runs = trained  # one run twice is an ensemble of two (a single run: test_browser.py)
    test_images, test_masks = data / "test" / "images", data / "test" / "masks"
    answer = client.post("/api/predict", json={"runs": [run, run], "input": str(test_images), "tta": False,
                                               "device": "cpu"})
    assert answer.status_code == 200, answer.text
    job = wait_job(client, answer.json()["job"]["id"])
    assert job["state"] == "done", job["log"]
    # a pipeline predicts as its folder: its run/, or the ensemble of its folds when it cross-validated
    assert "ensemble" in job["title"] and job["argv"][3:6] == ["predict", f"{runs}/{run}", f"{runs}/{run}"]
    assert [f["name"] for f in job["files"]] == ["case0.tif"]
    out = answer.json()["predictions"]
    mask = tifffile.imread(runs / "predictions" / out / "case0.tif")
    assert mask.shape == (16, 24, 24) and set(np.unique(mask)) <= {0, 1}

    single = client.get(f"/api/predictions/{out}/files/case0.tif")
    assert single.status_code == 200 and single.content == (runs / "predictions" / out / "case0.tif").read_bytes()
    fast = client.post("/api/predict", json={"runs": [run], "input": str(test_images), "fast": True, "device": "cpu"})
    job = wait_job(client, fast.json()["job"]["id"])
    assert job["state"] == "done", job["log"]
    assert "--fast" in job["argv"] and "--tta" not in job["argv"] and "--no-tta" not in job["argv"]
    fast_mask = tifffile.imread(runs / "predictions" / fast.json()["predictions"] / "case0.tif")
    assert fast_mask.shape == mask.shape and set(np.unique(fast_mask)) <= {0, 1}
    archive = client.get(f"/api/predictions/{out}/download")
    assert archive.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(archive.content)) as zf:
        assert zf.namelist() == ["case0.tif"] and zf.read("case0.tif") == single.content
    assert not list((runs / ".biom3d-gui").glob("*.zip"))  # the temporary archive is gone
    assert client.get(f"/api/predictions/{out}/files/..%2F..%2Fconfig.yaml").status_code == 404
    assert client.get("/api/predictions/nope/download").status_code == 404

    overlay = client.get("/api/preview", params={"image": str(test_images / "case0.tif"),
                                                 "mask": str(runs / "predictions" / out / "case0.tif")})
    assert overlay.status_code == 200

    answer = client.post("/api/eval", json={"pred": str(runs / "predictions" / out), "truth": str(test_masks)})
    job = wait_job(client, answer.json()["job"]["id"])
    assert job["state"] == "done", job["log"]
    truth = tifffile.imread(test_masks / "case0.tif") > 0
    dice = 2 * np.logical_and(mask > 0, truth).sum() / ((mask > 0).sum() + truth.sum())
    (row,) = job["eval"]["rows"]
    assert row["file"] == "case0" and row["dice"] == pytest.approx(dice, abs=1e-5)
    assert job["eval"]["mean"]["dice"] == pytest.approx(dice, abs=1e-5)
    assert job["eval"]["unit"] is None and "hd95" not in row  # distances only when asked

    from biom3d.core.surface import surface_distances
    from tests.e2e.conftest import SPACING

    answer = client.post("/api/eval", json={"pred": str(runs / "predictions" / out), "truth": str(test_masks),
                                            "distances": True})
    job = wait_job(client, answer.json()["job"]["id"])
    (row,) = job["eval"]["rows"]
    expected = surface_distances(mask > 0, truth, SPACING)  # the fixture's ImageJ spacing, in um
    assert job["eval"]["unit"] == "um" and row["hd95"] == pytest.approx(expected["hd95"], abs=1e-5)
    assert job["eval"]["mean"]["assd"] == pytest.approx(expected["assd"], abs=1e-5)


def test_predict_refuses_untrained_or_unknown_runs_and_outside_inputs(trained, data):
    client, run, _ = trained
    assert client.post("/api/predict", json={"runs": [], "input": str(data)}).status_code == 400
    assert client.post("/api/predict", json={"runs": ["nope"], "input": str(data)}).status_code == 404
    assert client.post("/api/predict", json={"runs": [run], "input": "/etc"}).status_code == 403
    assert client.post("/api/eval", json={"pred": "/etc", "truth": str(data)}).status_code == 403


def test_stop_a_training_then_it_is_interrupted_and_resumable(trained, data):
    client, _, _ = trained
    answer = client.post("/api/train", json={"form": _form(data, name="stopped", epochs=50)})
    job_id = answer.json()["job"]["id"]
    stopped = client.post(f"/api/jobs/{job_id}/stop").json()
    assert stopped["stop_requested"] or stopped["state"] == "cancelled"
    job = wait_job(client, job_id, timeout=60)
    assert job["state"] in ("stopped", "cancelled")
    manager = client.app.state.gui.jobs
    from biom3d.gui.jobs import _alive

    assert not _alive(job["pid"], None)
    listed = {r["id"]: r for r in client.get("/api/runs").json()}
    if "stopped" in listed:  # it got as far as writing its folder
        assert listed["stopped"]["status"] == "interrupted" and listed["stopped"]["resumable"]
    assert manager.active_for("run", "stopped") is None


def test_a_restarted_server_finds_the_runs_and_the_jobs(trained, data):
    client, run, runs = trained
    with make_client(data, runs) as again:
        listed = {r["id"]: r for r in again.get("/api/runs").json()}
        assert listed[run]["status"] == "finished" and listed[run]["epochs_done"] >= 2
        jobs = again.get("/api/jobs").json()
        assert {j["kind"] for j in jobs} >= {"train", "predict", "eval"}
        assert all(j["state"] not in ("queued", "running") for j in jobs)

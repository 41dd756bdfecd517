"""Routes that start and follow jobs: training, resuming, runs and their curves and snapshots, prediction
(with downloads), evaluation, and the slice preview.

Each job is a `biom3d` command line built here from checked values only (a list, never a shell string):
``run CONFIG`` (training from the Train tab), ``run --resume`` / ``train --resume``, ``predict``, ``eval``.
"""

from __future__ import annotations

import csv
import io
import math
import tempfile
import zipfile
from pathlib import Path
from typing import Any

from fastapi import BackgroundTasks, FastAPI
from fastapi.responses import FileResponse, Response
from pydantic import BaseModel, ConfigDict

from biom3d.core.errors import ConfigError, InputError, Problem
from biom3d.gui import configs, runs
from biom3d.gui.jobs import new_id

RUN_FILES = ("curves.png", "log.csv", "config.yaml")
FOLDERLESS = ("queued", "running", "failed")  # a training listed by its job alone: no run folder yet, or ever


class TrainRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    form: configs.TrainForm | None = None
    yaml: str | None = None  # the expert editor's config; wins over the form


class ResumeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    epochs: int | None = None  # more epochs than planned extend a finished run


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    runs: list[str]
    input: str
    tta: bool | None = None
    fast: bool = False
    device: str = "auto"
    checkpoint: str | None = None


class EvalRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    pred: str
    truth: str
    num_classes: int | None = None
    distances: bool = False  # `biom3d eval --distances`: HD95 and ASSD too


def add_routes(app: FastAPI, state) -> None:  # noqa: C901  (one closure per route)
    jobs = state.jobs

    def run_status(info: runs.RunInfo) -> dict[str, Any]:
        active = jobs.active_for("run", info.id)
        last = active or jobs.last_for("run", info.id)
        data = info.public()
        if active is not None:
            data["status"] = active.state
        elif last is not None and last.state == "failed" and info.status != "finished":
            data["status"], data["message"] = "failed", last.message
        data["job"] = last.id if last is not None else None
        data["resumable"] = active is None and info.status != "finished"
        return data

    @app.post("/api/train")
    def train(req: TrainRequest) -> dict[str, Any]:
        if req.yaml:
            raw = configs.parse_yaml(req.yaml)
        elif req.form is not None:
            raw = configs.form_config(req.form, runs_dir=state.runs_dir, registry=state.registry)
        else:
            raise InputError("send the form or a YAML config")
        problems = configs.check(raw, roots=state.roots, runs_dir=state.runs_dir, registry=state.registry)
        if isinstance(raw.get("name"), str) and jobs.active_for("run", raw["name"]):
            problems.append(Problem("name", f"a run named {raw['name']!r} is queued or training already; choose "
                                    "another name"))
        if problems:
            raise ConfigError(problems)
        raw = configs.prepare(raw, roots=state.roots, runs_dir=state.runs_dir)
        from biom3d.core.atomic import atomic_write_text

        path = state.state_dir / "configs" / f"{raw['name']}-{new_id()}.yaml"  # its own: a refused twin leaves it be
        atomic_write_text(path, "# Written by biom3d gui\n" + configs.to_yaml(raw))
        device = (raw.get("train") or {}).get("device", "auto")
        try:
            job = jobs.submit("train", state.cli("run", path), lane=lane(device), title=f"train {raw['name']}",
                              target={"run": raw["name"]}, unique="run")
        except InputError:
            path.unlink(missing_ok=True)
            raise
        return {"job": job.public(), "run": raw["name"]}

    @app.get("/api/runs")
    def list_runs() -> list[dict[str, Any]]:
        found = [run_status(r) for r in runs.list_runs(state.runs_dir)]
        listed = {r["id"] for r in found}
        for job in jobs.list():  # a training whose run folder does not exist (yet: queued, starting; or it failed
            name = job.target.get("run")  # before writing it, e.g. a device that is not there)
            if job.kind == "train" and name and name not in listed and job.state in FOLDERLESS:
                found.insert(0, {"id": name, "name": name, "kind": "pipeline", "status": job.state, "epochs": None,
                                 "epochs_done": 0, "best": {}, "job": job.id, "resumable": False,
                                 "has_checkpoint": False, "snapshots": [], "modified": job.created,
                                 "message": job.message})
            if name:
                listed.add(name)  # newest first: an older job of the name says nothing more
        return found

    @app.get("/api/runs/{run_id}")
    def run_detail(run_id: str) -> dict[str, Any]:
        if not runs.RUN_ID.match(run_id):
            raise runs.NotFound(f"no run named {run_id!r}")
        if (state.runs_dir / run_id / "config.yaml").is_file():
            folder = runs.run_folder(state.runs_dir, run_id)
        else:
            job = jobs.last_for("run", run_id)
            if job is None or job.kind != "train" or job.state not in FOLDERLESS:
                raise runs.NotFound(f"no run named {run_id!r}")
            return {"id": run_id, "name": run_id, "status": job.state, "log": [], "metrics": [], "snapshots": [],
                    "job": job.id, "job_log": jobs.tail(job), "resumable": False, "best": {}, "epochs_done": 0,
                    "epochs": None, "message": job.message}  # started, its folder not written yet (or never)
        info = runs.read_run(folder)
        if info is None:
            raise InputError(f"{run_id!r} is not a run")
        data = run_status(info)
        rows = runs.read_log(Path(info.run_dir))
        data.update(log=rows, metrics=runs.metric_columns(rows))
        job = jobs.get(data["job"]) if data["job"] else None
        data["job_log"] = jobs.tail(job) if job else []
        data["eval"] = read_eval(folder / "eval.csv") if (folder / "eval.csv").is_file() else None
        return data

    @app.get("/api/runs/{run_id}/files/{name:path}")
    def run_file(run_id: str, name: str) -> FileResponse:
        info = runs.read_run(runs.run_folder(state.runs_dir, run_id))
        run_dir = Path(info.run_dir).resolve() if info else None
        ok = name in RUN_FILES or (name.startswith("snapshots/") and name.endswith(".png") and name.count("/") == 1)
        path = (run_dir / name).resolve() if run_dir and ok and ".." not in name else None
        if path is None or not path.is_relative_to(run_dir) or not path.is_file():
            raise runs.NotFound(f"run {run_id!r} has no file {name!r}")
        return FileResponse(path, headers={"cache-control": "no-store"})

    @app.post("/api/runs/{run_id}/resume")
    def resume(run_id: str, req: ResumeRequest) -> dict[str, Any]:
        folder = runs.run_folder(state.runs_dir, run_id)
        info = runs.read_run(folder)
        if info is None:
            raise InputError(f"{run_id!r} is not a run")
        if jobs.active_for("run", run_id):
            raise InputError(f"run {run_id!r} is training already")  # submit checks again, with the queue held
        if info.status == "finished" and not (req.epochs and info.epochs and req.epochs > info.epochs):
            raise InputError(f"run {run_id!r} is finished; ask for more epochs than its {info.epochs} to train it further")
        extra = ["--epochs", str(req.epochs)] if req.epochs else []
        argv = state.cli("run" if info.kind == "pipeline" else "train", "--resume", folder, *extra)
        job = jobs.submit("resume", argv, lane=lane(info.device), title=f"resume {run_id}", target={"run": run_id},
                          unique="run")
        return {"job": job.public(), "run": run_id}

    @app.get("/api/jobs")
    def list_jobs() -> list[dict[str, Any]]:
        return [j.public() for j in jobs.list()]

    @app.get("/api/jobs/{job_id}")
    def job_detail(job_id: str) -> dict[str, Any]:
        job = _job(jobs, job_id)
        data = {**job.public(), "log": jobs.tail(job)}
        if job.kind == "eval" and job.state == "done":
            data["eval"] = read_eval(Path(job.target["csv"]))
        if job.kind == "predict":
            data["files"] = prediction_files(state.runs_dir / "predictions" / job.target["predictions"])
        return data

    @app.post("/api/jobs/{job_id}/stop")
    def stop(job_id: str) -> dict[str, Any]:
        _job(jobs, job_id)
        return jobs.stop(job_id).public()

    @app.post("/api/predict")
    def predict(req: PredictRequest) -> dict[str, Any]:
        if not req.runs:
            raise InputError("choose at least one run to predict with (several: an ensemble)")
        run_dirs = []
        for run_id in req.runs:
            info = runs.read_run(runs.run_folder(state.runs_dir, run_id))
            if info is None or not info.has_checkpoint:
                raise InputError(f"run {run_id!r} has no trained weights yet; train or resume it first")
            run_dirs.append(info.folder if info.kind == "pipeline" else info.run_dir)  # a pipeline: all its folds
        source = state.roots.check(req.input, what="input")
        if req.checkpoint not in (None, "best", "last"):
            raise InputError("checkpoint: best or last")
        out_id = new_id() + "-" + req.runs[0][:40]
        output = state.runs_dir / "predictions" / out_id
        argv = state.cli("predict", *run_dirs, "--input", source, "--output", output, "--device", req.device)
        argv += [] if req.tta is None else ["--tta" if req.tta else "--no-tta"]
        argv += ["--fast"] if req.fast else []
        argv += ["--checkpoint", req.checkpoint] if req.checkpoint else []
        what = "ensemble of " + ", ".join(req.runs) if len(req.runs) > 1 else req.runs[0]
        job = jobs.submit("predict", argv, lane=lane(req.device), title=f"predict {source.name} with {what}",
                          target={"predictions": out_id, "input": str(source), "runs": req.runs})
        return {"job": job.public(), "predictions": out_id, "folder": str(output)}

    @app.get("/api/predictions/{out_id}/download")
    def download(out_id: str, background: BackgroundTasks) -> FileResponse:
        folder = _predictions(state, out_id)
        files = [p for p in sorted(folder.rglob("*")) if p.is_file() and not p.is_symlink()]
        if not files:
            raise InputError(f"prediction {out_id!r} holds no mask yet")
        handle = tempfile.NamedTemporaryFile(dir=state.state_dir, suffix=".zip", delete=False)  # noqa: SIM115
        with handle, zipfile.ZipFile(handle, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for path in files:
                zf.write(path, path.relative_to(folder).as_posix())
        background.add_task(Path(handle.name).unlink, missing_ok=True)
        return FileResponse(handle.name, media_type="application/zip", filename=f"{out_id}.zip")

    @app.get("/api/predictions/{out_id}/files/{name:path}")
    def prediction_file(out_id: str, name: str) -> FileResponse:
        folder = _predictions(state, out_id)
        path = (folder / name).resolve()
        if ".." in Path(name).parts or not path.is_relative_to(folder) or not path.is_file():
            raise runs.NotFound(f"prediction {out_id!r} has no file {name!r}")
        return FileResponse(path, filename=path.name)

    @app.post("/api/eval")
    def evaluate(req: EvalRequest) -> dict[str, Any]:
        pred = state.roots.check(req.pred, what="predictions folder")
        truth = state.roots.check(req.truth, what="ground-truth folder")
        csv_path = state.runs_dir / "evaluations" / f"{new_id()}-{pred.name[:40]}.csv"
        argv = state.cli("eval", "--pred", pred, "--truth", truth, "--csv", csv_path)
        argv += ["--num-classes", str(req.num_classes)] if req.num_classes else []
        argv += ["--distances"] if req.distances else []
        job = jobs.submit("eval", argv, lane="eval", title=f"evaluate {pred.name} against {truth.name}",
                          target={"csv": str(csv_path), "pred": str(pred), "truth": str(truth)})
        return {"job": job.public()}

    @app.get("/api/preview")
    def preview(image: str, mask: str | None = None, slice: int | None = None) -> Response:
        from biom3d.gui.preview import render

        image_path = state.roots.check(image, what="image")
        mask_path = state.roots.check(mask, what="mask") if mask else None
        data, facts = render(image_path, mask_path, index=slice, registry=state.registry)
        return Response(data, media_type="image/png", headers={
            "x-slice": str(facts["slice"]), "x-depth": str(facts["depth"]),
            "x-shape": "x".join(map(str, facts["shape"])), "cache-control": "no-store"})


def lane(device: str | None) -> str:
    """The queue a device's jobs wait in: one job at a time on each GPU, and on the CPU."""
    device = (device or "auto").strip().lower()
    if device in ("cuda", "auto"):
        from biom3d.gui.server import devices

        return "cuda:0" if "cuda" in devices() else "cpu"
    return device


def read_eval(path: Path) -> dict[str, Any] | None:
    """eval.csv as {rows: [{file, class, dice, iou[, hd95, assd]}], mean: {...}, unit}; an undefined distance (one
    mask empty: "nan" in the CSV) is None, since JSON has no NaN."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return None
    rows, mean, unit = [], {}, None
    for row in csv.DictReader(io.StringIO(text)):
        metrics = [k for k in row if k not in ("file", "class", "unit")]  # the columns `biom3d eval` wrote
        values = {"file": row["file"], "class": row["class"], **{m: _number(row[m]) for m in metrics}}
        unit = row.get("unit") or unit
        if row["file"] == "mean" and row["class"] == "all":
            mean = {m: values[m] for m in metrics}
        elif row["file"] != "mean":
            rows.append(values)
    return {"rows": rows, "mean": mean, "unit": unit, "csv": str(path)}


def _number(text: str) -> float | None:
    value = float(text)
    return None if math.isnan(value) else value


def prediction_files(folder: Path) -> list[dict[str, Any]]:
    if not folder.is_dir():
        return []
    return [{"name": p.relative_to(folder).as_posix(), "size": p.stat().st_size}
            for p in sorted(folder.rglob("*")) if p.is_file() and not p.name.startswith(".")]


def _predictions(state, out_id: str) -> Path:
    base = (state.runs_dir / "predictions").resolve()
    folder = (base / out_id).resolve()
    if not runs.RUN_ID.match(out_id) or folder.parent != base or not folder.is_dir():
        raise runs.NotFound(f"no prediction named {out_id!r}")
    return folder


def _job(jobs, job_id: str):
    job = jobs.get(job_id)
    if job is None:
        raise runs.NotFound(f"no job {job_id!r}")
    return job

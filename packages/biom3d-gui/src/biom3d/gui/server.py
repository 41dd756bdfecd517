"""The web server: :func:`create_app` builds the FastAPI app (page, data and config routes here; runs, jobs,
predictions and previews in :mod:`biom3d.gui.routes`), :func:`serve` checks the bind and runs it with uvicorn.

Routes are plain ``def`` functions: FastAPI runs them in its thread pool, so a scan that reads every image
does not hold up the other requests. Errors are JSON ``{"error": paragraph, "problems": [{path, message,
field}]}``: 400 bad input, 403 a path outside the shared folders, 413 an upload too large, 422 a config (or
request) that does not validate.
"""

from __future__ import annotations

import contextlib
import os
import platform
import re
import socket
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fastapi import FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict

from biom3d.core.errors import Biom3dError, ConfigError, InputError, Problem
from biom3d.gui import configs, dataset
from biom3d.gui._version import __version__
from biom3d.gui.jobs import JobManager
from biom3d.gui.runs import NotFound
from biom3d.gui.security import BodyLimit, PathRefused, Roots, TokenGate, check_bind, resolve_token, safe_filename

STATIC = Path(__file__).parent / "static"
DEFAULT_PORT = 8765
DEFAULT_MAX_UPLOAD_MB = 2048
MAX_LISTED = 2000
CHUNK = 2**20


class State:
    """What every route shares: folders, jobs, limits, the registry and the interpreter jobs run with."""

    def __init__(self, roots: Sequence[Path], token: str | None, runs_dir: Path, *, max_upload_bytes: int,
                 jobs_per_device: int, registry=None, python: str = sys.executable):
        self.runs_dir = Path(runs_dir).expanduser().resolve()
        self.roots = Roots(roots, extra=[("runs", self.runs_dir)])  # checked before anything is created
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        self.state_dir = self.runs_dir / ".biom3d-gui"
        self.token = token
        self.max_upload_bytes = max_upload_bytes
        self.python = python
        self._registry = registry
        self.jobs = JobManager(self.state_dir, jobs_per_lane=jobs_per_device, cwd=self.runs_dir)

    @property
    def registry(self):
        if self._registry is None:
            from biom3d.core.discovery import get_registry

            self._registry = get_registry()
        return self._registry

    def cli(self, *args: str | Path) -> list[str]:
        """A `biom3d` command line, run by this server's interpreter."""
        return [self.python, "-m", "biom3d.cli", *(str(a) for a in args)]


def create_app(roots: Sequence[Path], token: str | None, runs_dir: Path, *,
               max_upload_bytes: int = DEFAULT_MAX_UPLOAD_MB * 2**20, jobs_per_device: int = 1, registry=None,
               python: str = sys.executable) -> FastAPI:
    """The app serving ``roots`` (the folders the page may browse) with runs in ``runs_dir``; ``token`` None
    disables authentication (only :func:`serve` on localhost allows that)."""
    from biom3d.gui.routes import add_routes

    state = State(roots, token, runs_dir, max_upload_bytes=max_upload_bytes, jobs_per_device=jobs_per_device,
                  registry=registry, python=python)
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        state.jobs.close()  # another server may take the runs folder's jobs now

    app = FastAPI(title="biom3d", version=__version__, docs_url=None, redoc_url=None, openapi_url=None,
                  lifespan=lifespan)
    app.state.gui = state
    _error_handlers(app)
    app.add_middleware(BodyLimit, limit=max_upload_bytes)
    app.add_middleware(TokenGate, token=token)  # outermost: nothing is read before the token is checked
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"cache-control": "no-store"})

    @app.get("/api/info")
    def info() -> dict[str, Any]:
        reg = state.registry
        stacks = [{"id": s.qid, "summary": s.spec.summary, "priority": s.spec.priority,  # type: ignore[attr-defined]
                   "small": bool(s.spec.small)} for s in reg.stacks()]  # type: ignore[attr-defined]
        return {"version": __version__, "roots": state.roots.as_list(), "runs_dir": str(state.runs_dir),
                "stacks": stacks, "devices": devices(), "max_upload_mb": state.max_upload_bytes / 2**20,
                "token_required": state.token is not None}

    @app.get("/api/browse")
    def browse(path: str | None = None) -> dict[str, Any]:
        if not path:
            return {"path": None, "parent": None, "entries": [{"name": r["name"], "path": r["path"], "dir": True}
                                                              for r in state.roots.as_list()]}
        folder = state.roots.check(path, what="folder")
        if not folder.is_dir():
            raise InputError(f"{path} is not a folder")
        entries = []
        for entry in sorted(folder.iterdir(), key=lambda p: (not p.is_dir(), p.name.lower()))[:MAX_LISTED]:
            if entry.name.startswith("."):
                continue
            try:
                inside = state.roots.check(entry, what="entry")
                is_dir = inside.is_dir()
                size = None if is_dir else inside.stat().st_size
            except (InputError, OSError):
                continue  # a link out of the shared folders (or to nothing) is not shown
            entries.append({"name": entry.name, "path": str(folder / entry.name), "dir": is_dir, "size": size,
                            "image": not is_dir and _readable(state.registry, inside)})
        root = state.roots.root_of(folder)
        parent = str(folder.parent) if folder != root.path else None
        return {"path": str(folder), "parent": parent, "root": root.name, "entries": entries}

    @app.post("/api/upload")
    def upload(files: list[UploadFile] = File(...), kind: str = Form("images"), batch: str = Form("")) -> dict[str, Any]:
        """Files into ``<runs>/uploads/<batch>/<kind>/``, each written atomically."""
        from biom3d.core.atomic import atomic_path

        if kind not in ("images", "masks", "inputs", "truth"):
            raise InputError("kind: images, masks, inputs or truth")
        if batch and not re.fullmatch(r"[A-Za-z0-9-]{1,64}", batch):
            raise InputError("batch: not an upload batch name")
        batch = batch or time.strftime("%Y%m%d-%H%M%S-") + os.urandom(3).hex()
        folder = state.runs_dir / "uploads" / batch / kind
        names = [safe_filename(f.filename or "") for f in files]
        if len(set(names)) != len(names):
            raise InputError("two uploaded files have the same name")
        for f, name in zip(files, names, strict=True):
            with atomic_path(folder / name) as tmp, open(tmp, "wb") as out:
                while chunk := f.file.read(CHUNK):
                    out.write(chunk)
        return {"batch": batch, "folder": str(folder), "files": names}

    @app.post("/api/scan")
    def scan(req: ScanRequest) -> dict[str, Any]:
        images = state.roots.check(req.images, what="images folder")
        masks = state.roots.check(req.masks, what="masks folder")
        budget = {k: v for k, v in {"max_dim": req.max_dim, "max_pool": req.max_pool,
                                    "max_batch": req.max_batch}.items() if v is not None}
        return dataset.scan(images, masks, num_classes=req.num_classes, multilabel=req.multilabel, stack=req.stack,
                            budget=budget, registry=state.registry)

    @app.post("/api/autoconfig")
    def autoconfig(req: AutoconfigRequest) -> dict[str, Any]:
        try:
            return dataset.autoconfig(req.median_shape, num_images=req.num_images, max_dim=req.max_dim,
                                      max_pool=req.max_pool, max_batch=req.max_batch, patch_size=req.patch_size)
        except ValueError as exc:
            field = "patch_size" if "patch_size" in str(exc) else "median_shape"
            raise ConfigError([Problem(field, str(exc).removeprefix("patch_size: "))]) from exc

    @app.post("/api/config/draft")
    def draft(form: configs.TrainForm) -> dict[str, str]:
        return {"yaml": configs.to_yaml(configs.form_config(form, runs_dir=state.runs_dir, registry=state.registry))}

    @app.post("/api/config/validate")
    def validate(req: YamlRequest) -> dict[str, Any]:
        try:
            raw = configs.parse_yaml(req.yaml)
        except ConfigError as exc:
            return {"valid": False, "problems": configs.problems_json(exc.problems)}
        problems = configs.check(raw, roots=state.roots, runs_dir=state.runs_dir, registry=state.registry)
        return {"valid": not problems, "problems": configs.problems_json(problems)}

    add_routes(app, state)
    return app


class ScanRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    images: str
    masks: str
    num_classes: int = 1
    multilabel: bool = False
    stack: str | None = None
    max_dim: int | None = None
    max_pool: int | None = None
    max_batch: int | None = None


class AutoconfigRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    median_shape: list[float]
    num_images: int | None = None
    max_dim: int = 128
    max_pool: int = 5
    max_batch: int | None = None
    patch_size: list[int] | None = None


class YamlRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    yaml: str


def devices() -> list[str]:
    """What the device menu offers: auto, cpu, and the GPUs the NVIDIA driver lists (torch is not imported)."""
    found = ["auto", "cpu"]
    gpus = sorted(Path("/proc/driver/nvidia/gpus").glob("*")) if Path("/proc/driver/nvidia/gpus").is_dir() else []
    if gpus:
        found += ["cuda", *(f"cuda:{i}" for i in range(len(gpus)))]
    if platform.system() == "Darwin" and platform.machine() == "arm64":
        found.append("mps")
    return found


def _readable(registry, path: Path) -> bool:
    from biom3d.core.registry import ResolutionError

    try:
        registry.reader_for(path)
    except ResolutionError:
        return False
    return True


def _error_handlers(app: FastAPI) -> None:
    def answer(status: int, message: str, problems: list[dict[str, str]] | None = None) -> JSONResponse:
        return JSONResponse({"error": message, "problems": problems or []}, status_code=status,
                            headers={"cache-control": "no-store"})

    @app.exception_handler(Biom3dError)
    def _biom3d(request: Request, exc: Biom3dError) -> JSONResponse:
        if isinstance(exc, PathRefused):
            return answer(403, str(exc))
        if isinstance(exc, NotFound):
            return answer(404, str(exc))
        if isinstance(exc, ConfigError):
            return answer(422, str(exc), configs.problems_json(exc.problems))
        return answer(400 if exc.exit_code == 2 else 500, str(exc))

    @app.exception_handler(RequestValidationError)
    def _request(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [Problem(".".join(str(p) for p in e["loc"][1:]), e["msg"]) for e in exc.errors()]
        return answer(422, "; ".join(str(p) for p in problems), configs.problems_json(problems))

    @app.exception_handler(HTTPException)
    def _http(request: Request, exc: HTTPException) -> JSONResponse:
        return answer(exc.status_code, str(exc.detail))


# -- serving -------------------------------------------------------------------------------------------------
def serve(host: str = "127.0.0.1", port: int = DEFAULT_PORT, roots: Sequence[Path] = (), *, no_browser: bool = False,
          runs_dir: Path | None = None, token: str | None = None, no_token: bool = False,
          max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB, jobs_per_device: int = 1) -> None:
    """Check the bind, print the address with its token, open the browser, serve until Ctrl-C."""
    import uvicorn

    token = resolve_token(token, no_token=no_token)
    check_bind(host, token)
    roots = [Path(r) for r in roots] or [Path.cwd()]
    runs_dir = Path(runs_dir) if runs_dir is not None else Path("runs")
    sock = bind(host, port)  # first: a port in use must not have started the runs folder's queued jobs
    try:
        app = create_app(roots, token, runs_dir, max_upload_bytes=int(max_upload_mb * 2**20),
                         jobs_per_device=jobs_per_device)
    except BaseException:
        sock.close()
        raise
    url = address(host, sock.getsockname()[1], token)
    state: State = app.state.gui
    print(f"biom3d gui {__version__}: sharing {', '.join(r['path'] for r in state.roots.as_list())}", flush=True)
    print(f"runs folder: {state.runs_dir}", flush=True)
    print(f"open {url}", flush=True)
    if not no_browser:
        threading.Timer(1.0, _open_browser, args=(url,)).start()
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", proxy_headers=True, access_log=False))
    try:
        server.run(sockets=[sock])
    finally:
        running = state.jobs.shutdown()
        state.jobs.close()
        if running:
            print(f"{len(running)} job(s) still running: start `biom3d gui` again with the same runs folder to "
                  "see them, or stop them there", flush=True)


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, opened here so that a port in use is one clear error (port 0: any free one)."""
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                          flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
    except OSError as exc:
        raise InputError(f"cannot listen on {host}:{port}: {exc.strerror or exc}; choose another --port (or "
                         "--host)") from exc
    sock.listen(128)
    sock.set_inheritable(False)
    return sock


def address(host: str, port: int, token: str | None) -> str:
    shown = socket.gethostname() if host in ("0.0.0.0", "::", "") else host
    shown = f"[{shown}]" if ":" in shown else shown
    return f"http://{shown}:{port}/" + (f"?token={token}" if token else "")


def _open_browser(url: str) -> None:
    import webbrowser

    with contextlib.suppress(Exception):  # no browser on a server: the printed address is enough
        webbrowser.open(url)

"""What a shared GPU server's administrator insists on: a token on every request, no unauthenticated bind
beyond localhost, paths confined to the folders the server was started with, bounded uploads.

The token travels once in the URL (``/?token=...``, printed at start like Jupyter's), is then kept in an
HttpOnly, SameSite=Strict cookie named after the token's hash (two servers on one host do not overwrite each
other's), and may also come as ``Authorization: Bearer`` or ``X-Biom3d-Token`` (scripts, curl).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import os
import re
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from biom3d.core.errors import InputError

TOKEN_ENV = "BIOM3D_GUI_TOKEN"
MIN_TOKEN_LENGTH = 8
HEADERS = [  # every response: no framing, no sniffing, no referrer (a URL may hold the token), own files only
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"content-security-policy", b"default-src 'self'; img-src 'self' data: blob:; object-src 'none'; "
                                 b"frame-ancestors 'none'; base-uri 'none'; form-action 'self'"),
]


class PathRefused(InputError):
    """A path outside the shared folders (or naming ``..``); the server answers 403."""


def resolve_token(explicit: str | None = None, *, no_token: bool = False, env: dict[str, str] | None = None) -> str | None:
    """The token to require: ``explicit``, else ``$BIOM3D_GUI_TOKEN``, else a new random one; None only with
    ``no_token`` (then :func:`check_bind` keeps the server on localhost)."""
    env = os.environ if env is None else env
    if no_token:
        if explicit:
            raise InputError("give either a token or --no-token, not both")
        return None
    token = explicit if explicit is not None else env.get(TOKEN_ENV)
    if token is None:
        return secrets.token_urlsafe(32)
    token = token.strip()
    if len(token) < MIN_TOKEN_LENGTH or not re.fullmatch(r"[A-Za-z0-9._~-]+", token):
        where = "--token" if explicit is not None else f"${TOKEN_ENV}"  # what an address and a cookie carry as is
        raise InputError(f"{where} must be at least {MIN_TOKEN_LENGTH} characters among letters, digits and . _ ~ -; "
                         "unset it to get a random token printed at start")
    return token


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` serves this machine only (localhost, 127.0.0.0/8, ::1)."""
    if host.strip().lower() in ("localhost", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None) -> None:
    """Refuse to serve another machine without a token: anyone who can reach the port could train, read the
    shared folders and fill the disk."""
    if token is None and not is_loopback(host):
        raise InputError(f"refusing to listen on {host!r} without a token: every machine that reaches it could use "
                         "the server. Drop --no-token (a token is printed at start, or set $BIOM3D_GUI_TOKEN), or "
                         "listen on 127.0.0.1 and connect through `ssh -L`")


def cookie_name(token: str) -> str:
    return "biom3d_gui_" + hashlib.sha256(token.encode()).hexdigest()[:12]


# -- folders -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Root:
    name: str
    path: Path  # resolved


class Roots:
    """The folders the server shares. A path is accepted when, symbolic links resolved, it lies inside one
    of them; one naming ``..`` is refused outright, whatever it resolves to."""

    def __init__(self, folders: Sequence[Path], extra: Iterable[tuple[str, Path]] = ()):
        roots: list[Root] = []
        names: set[str] = set()
        for folder in list(folders):
            path = Path(folder).expanduser().resolve()
            if not path.is_dir():
                raise InputError(f"--root {folder}: not a folder")
            name = path.name or str(path)
            while name in names:
                name += "'"
            names.add(name)
            roots.append(Root(name, path))
        for name, folder in extra:
            path = Path(folder).expanduser().resolve()
            if not any(path.is_relative_to(r.path) for r in roots):
                roots.append(Root(name, path))
        if not roots:
            raise InputError("give at least one --root folder to share")
        self.roots = roots

    def check(self, value: str | Path, *, must_exist: bool = True, what: str = "path") -> Path:
        """The resolved path ``value`` names, if it is inside a root (relative paths start at the first one)."""
        text = str(value)
        if not text or "\x00" in text:
            raise PathRefused(f"{what}: empty or invalid path")
        path = Path(text).expanduser()
        if ".." in path.parts:
            raise PathRefused(f"{what} {text}: '..' is not allowed; give the folder itself")
        if not path.is_absolute():
            path = self.roots[0].path / path
        real = path.resolve()
        if not any(real == r.path or real.is_relative_to(r.path) for r in self.roots):
            raise PathRefused(f"{what} {text} is outside the folders this server shares "
                              f"({', '.join(str(r.path) for r in self.roots)}); restart `biom3d gui` with "
                              "--root FOLDER to share another one")
        if must_exist and not real.exists():
            raise InputError(f"{what} {text} does not exist")
        return real

    def root_of(self, path: Path) -> Root:
        return max((r for r in self.roots if path == r.path or path.is_relative_to(r.path)),
                   key=lambda r: len(r.path.parts))

    def as_list(self) -> list[dict[str, str]]:
        return [{"name": r.name, "path": str(r.path)} for r in self.roots]


def safe_filename(name: str) -> str:
    """An uploaded file's name as a plain file name: the last path part, no leading dot, safe characters
    (suffixes such as ``.ome.tif`` and ``.nii.gz`` kept)."""
    base = re.split(r"[\\/]", name or "")[-1]
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", base).lstrip(".")
    if not base or base in (".", ".."):
        raise InputError(f"upload {name!r}: not a usable file name")
    return base[:200]


# -- ASGI middleware -----------------------------------------------------------------------------------------
class TokenGate:
    """Every request needs the token (query, header or cookie); the page's ``?token=`` sets the cookie and is
    dropped from the address bar by a redirect. Unsafe methods from another origin are refused too."""

    def __init__(self, app: Any, token: str | None):
        self.app, self.token = app, token
        self.cookie = cookie_name(token) if token else ""

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):  # lifespan
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if scope["type"] == "websocket":  # none is served; still, none gets past without the token
            query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
            if self.token is None or self._valid((query.get("token") or [""])[0] or _presented(headers, self.cookie)):
                await self.app(scope, receive, send)
            else:
                await send({"type": "websocket.close", "code": 1008})
            return
        send = _with_headers(send)
        if scope["method"] not in ("GET", "HEAD", "OPTIONS") and not _same_origin(headers):
            await _plain(send, 403, json.dumps({"error": "cross-origin request refused"}), "application/json")
            return
        if self.token is None:
            # without a token the Host must name this machine: a page elsewhere whose name resolves to 127.0.0.1
            # (DNS rebinding) is then its own origin, and would otherwise read and drive the server
            if not is_loopback(_hostname(headers.get("host", ""))):
                await _plain(send, 403, json.dumps({"error": "this server has no token, so it answers only at "
                                                             "localhost or 127.0.0.1 (the Host header names "
                                                             f"{headers.get('host', '')!r}); restart it with a token "
                                                             "to serve it under another name"}), "application/json")
                return
            await self.app(scope, receive, send)
            return
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        from_query = (query.get("token") or [""])[0]
        if from_query and self._valid(from_query):
            if scope["method"] == "GET" and not scope["path"].startswith("/api/"):
                await self._redirect_with_cookie(scope, headers, query, send)
                return
            await self.app(scope, receive, send)
            return
        if self._valid(_presented(headers, self.cookie)):
            await self.app(scope, receive, send)
            return
        if scope["path"].startswith("/api/"):
            await _plain(send, 401, json.dumps({"error": "missing or wrong token: open the address `biom3d gui` "
                                                     "printed (it ends with ?token=...)"}), "application/json")
        else:
            await _plain(send, 401, LOGIN_PAGE, "text/html; charset=utf-8")

    def _valid(self, presented: str) -> bool:
        return bool(presented) and hmac.compare_digest(presented.encode(), str(self.token).encode())

    async def _redirect_with_cookie(self, scope: dict, headers: dict[str, str], query: dict, send: Any) -> None:
        rest = urlencode({k: v for k, v in query.items() if k != "token"}, doseq=True)
        location = "./" + scope["path"].rsplit("/", 1)[-1] + (f"?{rest}" if rest else "")  # relative: proxy prefixes
        secure = "; Secure" if scope.get("scheme") == "https" or headers.get("x-forwarded-proto") == "https" else ""
        cookie = f"{self.cookie}={self.token}; HttpOnly; SameSite=Strict; Path=/{secure}"
        await send({"type": "http.response.start", "status": 303,
                    "headers": [(b"location", location.encode()), (b"set-cookie", cookie.encode()),
                                (b"cache-control", b"no-store"), (b"content-length", b"0")]})
        await send({"type": "http.response.body", "body": b""})


class BodyLimit:
    """Refuse request bodies over ``limit`` bytes (413) as they arrive, before anything is stored: a declared
    Content-Length over the limit is refused up front, a chunked body as soon as it passes it (the error is
    raised from ``receive`` as an HTTPException, which FastAPI's body parsing lets through)."""

    def __init__(self, app: Any, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers", [])).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            await _plain(_with_headers(send), 413, json.dumps({"error": too_big(self.limit)}), "application/json")
            return
        seen = 0

        async def limited() -> dict:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    from fastapi import HTTPException

                    raise HTTPException(413, too_big(self.limit))
            return message

        await self.app(scope, limited, send)


def too_big(limit: int) -> str:
    return (f"upload too large: this server accepts at most {limit / 2**20:g} MiB per request (biom3d gui "
            "--max-upload-mb); upload fewer files at a time, or copy them into a shared folder")


def _presented(headers: dict[str, str], cookie: str) -> str:
    auth = headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    if headers.get("x-biom3d-token"):
        return headers["x-biom3d-token"].strip()
    # by hand, not SimpleCookie: it stops at the first cookie it cannot parse, and cookies are per host, not per
    # port, so another localhost app's odd cookie would hide ours
    for part in headers.get("cookie", "").split(";"):
        name, _, value = part.strip().partition("=")
        if name == cookie:
            return value.strip().strip('"')
    return ""


def _same_origin(headers: dict[str, str]) -> bool:
    """No Origin (curl, same-origin GET) or one whose host is the one asked for (directly or via a proxy); an
    opaque origin ("null": a sandboxed frame, a file) is another's."""
    origin = headers.get("origin")
    if not origin:
        return True
    host = urlsplit(origin).netloc.lower()
    asked = {headers.get("host", "").lower(), headers.get("x-forwarded-host", "").lower()} - {""}
    return bool(host) and host in asked


def _hostname(host: str) -> str:
    """A Host header's name without its port (``[::1]:8765`` -> ``::1``)."""
    host = host.strip()
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _with_headers(send: Any) -> Any:
    async def wrapped(message: dict) -> None:
        if message["type"] == "http.response.start":
            present = {k.lower() for k, _ in message.get("headers", [])}
            message = {**message, "headers": list(message.get("headers", []))
                       + [(k, v) for k, v in HEADERS if k not in present]}
        await send(message)
    return wrapped


async def _plain(send: Any, status: int, text: str, kind: str = "text/plain; charset=utf-8") -> None:
    body = text.encode("utf-8")
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", kind.encode()), (b"content-length", str(len(body)).encode()),
                            (b"cache-control", b"no-store")]})
    await send({"type": "http.response.body", "body": body})


LOGIN_PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>biom3d: token needed</title></head>
<body style="font-family: sans-serif; max-width: 40em; margin: 4em auto">
<h1>biom3d needs its token</h1>
<p>Open the address that <code>biom3d gui</code> printed when it started: it ends with <code>?token=...</code>.
You only need it once per browser.</p>
<p>Lost it? The person who started the server can see it in its terminal, or restart it with a token of their
choice: <code>BIOM3D_GUI_TOKEN=... biom3d gui</code>.</p></body></html>"""

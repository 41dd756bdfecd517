"""What a shared server needs: the token on every route, no token-less bind beyond localhost, paths confined to
the shared folders (``..``, absolute paths, symbolic links), bounded atomic uploads, no cross-origin writes."""

from __future__ import annotations

import io
import os

import pytest

from biom3d.core.errors import InputError
from biom3d.gui.security import check_bind, cookie_name, is_loopback, resolve_token, safe_filename
from tests.gui.conftest import TOKEN, make_client

PROTECTED = ["/", "/static/app.js", "/api/info", "/api/browse", "/api/runs", "/api/jobs", "/api/runs/x",
             "/api/preview?image=x"]


@pytest.fixture
def anonymous(data, tmp_path):
    from fastapi.testclient import TestClient

    client = make_client(data, tmp_path / "runs")
    return TestClient(client.app)  # same app, no token header


def test_every_route_needs_the_token(anonymous):
    for path in PROTECTED:
        answer = anonymous.get(path)
        assert answer.status_code == 401, path
    assert "?token=" in anonymous.get("/").text  # the page says where the token is
    assert "token" in anonymous.get("/api/info").json()["error"]
    assert anonymous.post("/api/train", json={}).status_code == 401
    assert anonymous.post("/api/upload", files={"files": ("a.tif", b"x")}).status_code == 401


def test_a_wrong_token_is_refused_wherever_it_comes_from(anonymous):
    wrong = "not-the-token-000"
    assert anonymous.get("/api/info", params={"token": wrong}).status_code == 401
    assert anonymous.get("/api/info", headers={"X-Biom3d-Token": wrong}).status_code == 401
    assert anonymous.get("/api/info", headers={"Authorization": f"Bearer {wrong}"}).status_code == 401
    anonymous.cookies.set(cookie_name(TOKEN), wrong)
    assert anonymous.get("/api/info").status_code == 401
    assert anonymous.get("/", params={"token": wrong}, follow_redirects=False).status_code == 401


def test_the_token_once_in_the_address_then_a_cookie(anonymous):
    answer = anonymous.get("/", params={"token": TOKEN, "x": "1"}, follow_redirects=False)
    assert answer.status_code == 303 and answer.headers["location"] == "./?x=1"  # token dropped, relative (proxies)
    cookie = answer.headers["set-cookie"]
    assert cookie.startswith(f"{cookie_name(TOKEN)}={TOKEN};") and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert anonymous.get("/api/info").status_code == 200  # the client kept the cookie
    page = anonymous.get("/")
    assert page.status_code == 200 and 'src="static/app.js"' in page.text
    assert anonymous.get("/static/app.js").status_code == 200
    fresh = type(anonymous)(anonymous.app)
    assert fresh.get("/api/info", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    assert fresh.get("/api/info", params={"token": TOKEN}).status_code == 200  # scripts: ?token= on the API


def test_responses_forbid_framing_sniffing_and_foreign_scripts(client):
    headers = client.get("/").headers
    assert headers["x-frame-options"] == "DENY" and headers["x-content-type-options"] == "nosniff"
    assert "default-src 'self'" in headers["content-security-policy"]
    assert headers["referrer-policy"] == "no-referrer"


def test_a_write_from_another_origin_is_refused(client):
    form = {"form": {"name": "x"}}
    answer = client.post("/api/config/draft", json=form["form"], headers={"Origin": "http://evil.example"})
    assert answer.status_code == 403 and "cross-origin" in answer.json()["error"]
    assert client.post("/api/config/draft", json=form["form"], headers={"Origin": "http://testserver"}).status_code == 200


def test_an_opaque_origin_or_a_missing_host_is_not_the_same_origin(client):
    for headers in ({"Origin": "null"}, {"Origin": "http://", "Host": ""}):
        answer = client.post("/api/config/draft", json={"name": "x"}, headers=headers)
        assert answer.status_code == 403, headers


def test_without_a_token_only_localhost_names_are_served(data, tmp_path):
    """DNS rebinding: evil.example resolved to 127.0.0.1 makes the attacker's page same-origin with the server;
    only the Host header tells them apart."""
    client = make_client(data, tmp_path / "runs", token=None)
    for host in ("localhost:8765", "127.0.0.1:8765", "[::1]:8765", "127.0.0.1"):
        assert client.get("/api/browse", headers={"Host": host}).status_code == 200, host
    for host in ("evil.example:8765", "evil.example", "192.168.1.5:8765"):
        answer = client.get("/api/browse", headers={"Host": host})
        assert answer.status_code == 403 and "only at localhost" in answer.json()["error"], host
        draft = client.post("/api/config/draft", json={"name": "x"},
                            headers={"Host": host, "Origin": f"http://{host}"})
        assert draft.status_code == 403, host


def test_another_apps_odd_cookie_does_not_hide_ours(anonymous):
    ours = f"{cookie_name(TOKEN)}={TOKEN}"
    for header in (f'jupyter="a b"; x={{"json": 1}}; {ours}', f"{ours}; other=1", f'bad cookie; {ours}'):
        assert anonymous.get("/api/info", headers={"Cookie": header}).status_code == 200, header
    assert anonymous.get("/api/info", headers={"Cookie": f"{cookie_name(TOKEN)}=wrong-token"}).status_code == 401


def test_no_token_only_on_localhost():
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1") and is_loopback("127.1.2.3")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5") and not is_loopback("myserver")
    check_bind("127.0.0.1", None)
    check_bind("0.0.0.0", TOKEN)
    for host in ("0.0.0.0", "::", "10.0.0.7", "gpu-server"):
        with pytest.raises(InputError, match="without a token"):
            check_bind(host, None)


def test_serve_refuses_a_tokenless_public_bind_before_listening(tmp_path):
    from biom3d.gui.server import serve

    with pytest.raises(InputError, match="without a token"):
        serve("0.0.0.0", 0, [tmp_path], no_browser=True, runs_dir=tmp_path / "runs", no_token=True)
    assert not (tmp_path / "runs").exists()  # refused before anything was created


def test_token_from_the_environment_or_random():
    assert resolve_token(env={"BIOM3D_GUI_TOKEN": "from-the-env-123"}) == "from-the-env-123"
    assert resolve_token("explicit-token-1", env={"BIOM3D_GUI_TOKEN": "from-the-env-123"}) == "explicit-token-1"
    first, second = resolve_token(env={}), resolve_token(env={})
    assert first != second and len(first) >= 32
    assert resolve_token(no_token=True, env={"BIOM3D_GUI_TOKEN": "ignored-token"}) is None
    with pytest.raises(InputError, match="at least 8"):
        resolve_token(env={"BIOM3D_GUI_TOKEN": "short"})
    with pytest.raises(InputError, match="at least 8"):
        resolve_token(env={"BIOM3D_GUI_TOKEN": ""})
    for odd in ("semi;colon-token", "plus+sign-token", 'quote"token-x', "per%cent-token"):  # the cookie or the
        with pytest.raises(InputError, match="letters, digits and"):  # printed address would cut or change it
            resolve_token(odd, env={})


# -- paths ---------------------------------------------------------------------------------------------------
def test_browse_lists_the_shared_folders_and_their_content(client, data):
    roots = client.get("/api/browse").json()["entries"]
    assert [r["path"] for r in roots][0] == str(data.resolve())
    listing = client.get("/api/browse", params={"path": str(data / "train" / "images")}).json()
    assert [e["name"] for e in listing["entries"]] == ["case0.tif", "case1.tif", "case2.tif"]
    assert all(e["image"] and not e["dir"] for e in listing["entries"])
    assert listing["parent"] == str((data / "train").resolve())
    assert client.get("/api/browse", params={"path": str(data)}).json()["parent"] is None  # a root has no parent


def test_dot_dot_absolute_paths_outside_and_missing_folders_are_refused(client, data):
    for path in (f"{data}/train/..", f"{data}/../", "../etc", "/etc", "/"):
        answer = client.get("/api/browse", params={"path": path})
        assert answer.status_code == 403, path
    assert "'..' is not allowed" in client.get("/api/browse", params={"path": f"{data}/train/.."}).json()["error"]
    assert "outside the folders" in client.get("/api/browse", params={"path": "/etc"}).json()["error"]
    assert client.get("/api/browse", params={"path": str(data / "nope")}).status_code == 400
    answer = client.post("/api/scan", json={"images": "/etc", "masks": str(data / "train" / "masks")})
    assert answer.status_code == 403
    assert client.get("/api/preview", params={"image": "/etc/hostname"}).status_code == 403


def test_a_symbolic_link_out_of_the_shared_folders_is_refused(client, data, tmp_path):
    outside = tmp_path / "secret"
    outside.mkdir()
    (outside / "key.txt").write_text("x", encoding="utf-8")
    link = data / "escape"
    os.symlink(outside, link)
    inner = data / "inner-link"
    os.symlink(data / "train", inner)
    dangling = data / "dangling"
    os.symlink(data / "nothing-here", dangling)
    try:
        assert client.get("/api/browse", params={"path": str(link)}).status_code == 403
        assert client.get("/api/preview", params={"image": str(link / "key.txt")}).status_code == 403
        names = [e["name"] for e in client.get("/api/browse", params={"path": str(data)}).json()["entries"]]
        assert "escape" not in names and "dangling" not in names and "inner-link" in names  # inside is fine
        assert client.get("/api/browse", params={"path": str(inner / "images")}).status_code == 200
    finally:
        for path in (link, inner, dangling):
            path.unlink()


# -- uploads -------------------------------------------------------------------------------------------------
def test_uploads_are_written_atomically_under_safe_names(client, tmp_path):
    files = [("files", ("../../evil.tif", b"A" * 1000)), ("files", ("b.nii.gz", b"B" * 10))]
    answer = client.post("/api/upload", files=files, data={"kind": "images"})
    assert answer.status_code == 200, answer.text
    result = answer.json()
    folder = tmp_path / "runs" / "uploads" / result["batch"] / "images"
    assert result["files"] == ["evil.tif", "b.nii.gz"] and result["folder"] == str(folder)
    assert (folder / "evil.tif").read_bytes() == b"A" * 1000 and (folder / "b.nii.gz").read_bytes() == b"B" * 10
    assert sorted(p.name for p in folder.iterdir()) == ["b.nii.gz", "evil.tif"]  # no temporary left
    assert not (tmp_path / "evil.tif").exists()
    again = client.post("/api/upload", files=[("files", ("m.tif", b"M"))], data={"kind": "masks", "batch": result["batch"]})
    assert again.json()["folder"] == str(folder.parent / "masks")
    assert client.post("/api/upload", files=[("files", ("m.tif", b"M"))], data={"batch": "../x"}).status_code == 400
    with pytest.raises(InputError):
        safe_filename("..")


def test_an_oversize_upload_is_refused_before_anything_is_stored(data, tmp_path):
    small = make_client(data, tmp_path / "runs", max_upload_bytes=4096)
    answer = small.post("/api/upload", files=[("files", ("big.tif", b"x" * 10_000))])
    assert answer.status_code == 413 and "at most" in answer.json()["error"]
    # a body without Content-Length (chunked) is cut as soon as it passes the limit
    chunks = (b"y" * 1024 for _ in range(20))
    streamed = small.post("/api/upload", content=chunks, headers={"content-type": "multipart/form-data; boundary=zz"})
    assert streamed.status_code == 413
    uploads = tmp_path / "runs" / "uploads"
    assert not uploads.exists() or not any(p.is_file() for p in uploads.rglob("*"))
    ok = small.post("/api/upload", files=[("files", ("ok.tif", io.BytesIO(b"z" * 100)))])
    assert ok.status_code == 200


def test_a_websocket_without_the_token_is_closed(anonymous):
    from starlette.websockets import WebSocketDisconnect

    with pytest.raises(WebSocketDisconnect) as closed, anonymous.websocket_connect("/api/anything"):
        pass
    assert closed.value.code == 1008

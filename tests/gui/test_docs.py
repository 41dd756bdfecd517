"""docs/gui.md is exercised as written: every ``biom3d gui`` command line in it is parsed by the real command
(its server replaced by a recorder), every bash block is valid bash, the SSH tunnels and the proxy forward the
port the server listens on, the python block runs; ``text`` blocks are output and listings."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from biom3d.gui import cli
from tests.fenced import fenced_blocks

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "gui.md"
LANGUAGES = {"bash", "text", "nginx", "python"}


def blocks(kind: str | None = None) -> list[tuple[int, str, str]]:
    """(line, language, text) of each fenced block."""
    return [b for b in fenced_blocks(GUIDE) if kind is None or b[1] == kind]


def commands(prefix: str) -> list[tuple[int, list[str]]]:
    """Every command line of the bash blocks (and inline code) that starts with ``prefix``."""
    text = GUIDE.read_text(encoding="utf-8")
    lines = [(line, cmd) for line, _, body in blocks("bash") for cmd in body.splitlines()]
    lines += [(0, span) for span in re.findall(r"`([^`\n]+)`", text)]
    return [(line, shlex.split(cmd.replace("...", "").replace("$USER", "me")))
            for line, cmd in lines if cmd.startswith(prefix)]


def test_every_block_is_of_a_kind_this_test_checks():
    assert blocks(), "docs/gui.md has no code block"
    assert {lang for _, lang, _ in blocks()} <= LANGUAGES


def test_bash_blocks_are_valid_bash():
    for line, _, body in blocks("bash"):
        proc = subprocess.run(["bash", "-n"], input=body, capture_output=True, text=True, encoding="utf-8",
                              errors="replace", timeout=30)
        assert proc.returncode == 0, f"docs/gui.md:{line}: {proc.stderr}"


def test_every_biom3d_gui_command_line_parses_with_the_real_command(monkeypatch):
    import biom3d.gui.server as server

    calls = []
    monkeypatch.setattr(server, "serve", lambda *a, **kw: calls.append((a, kw)))
    app = typer.Typer()
    cli.register(app)

    @app.command("other")  # two commands, so `gui` is addressed by name as under `biom3d`
    def other() -> None: ...

    found = commands("biom3d gui")
    assert len(found) >= 4
    for line, argv in found:
        result = CliRunner().invoke(app, argv[1:])
        assert result.exit_code == 0, f"docs/gui.md:{line}: {shlex.join(argv)}: {result.output}"
    hosts = {a[0] for a, _ in calls}
    assert hosts == {"127.0.0.1"}  # the guide never tells anyone to listen beyond localhost
    assert any(kw["runs_dir"] == Path("/scratch/me/runs") and len(a[2]) == 2 for a, kw in calls)


def test_the_tunnels_and_the_proxy_forward_the_served_port():
    from biom3d.gui.server import DEFAULT_MAX_UPLOAD_MB, DEFAULT_PORT

    tunnels = commands("ssh ")
    assert tunnels
    for line, argv in tunnels:
        local, host, remote = argv[argv.index("-L") + 1].split(":")
        assert local == remote and host == "127.0.0.1", f"docs/gui.md:{line}"
    ports = {argv[argv.index("--port") + 1] for _, argv in commands("biom3d gui") if "--port" in argv}
    assert {local for _, argv in tunnels for local in [argv[argv.index("-L") + 1].split(":")[0]]} == {str(DEFAULT_PORT)} | ports
    ((_, _, nginx),) = blocks("nginx")
    assert f"proxy_pass http://127.0.0.1:{DEFAULT_PORT}/;" in nginx
    assert f"client_max_body_size {DEFAULT_MAX_UPLOAD_MB}m;" in nginx
    assert "X-Forwarded-Host" in nginx and "X-Forwarded-Proto" in nginx  # what the origin check and the cookie read
    for _, _, body in blocks("bash"):
        if "curl" in body:
            assert f"127.0.0.1:{DEFAULT_PORT}/api/runs" in body and "Authorization: Bearer" in body


def test_the_printed_address_looks_like_the_guide_says(tmp_path):
    from biom3d.gui.server import address

    (text,) = [body for _, lang, body in blocks("text") if "open http" in body]
    shown = re.search(r"open (http://\S+)", text)[1]
    assert shown.startswith(address("127.0.0.1", 8765, "T").removesuffix("T"))


@pytest.mark.parametrize("block", [b for b in blocks("python")], ids=lambda b: f"line{b[0]}")
def test_python_blocks_run(block, tmp_path):
    line, _, code = block
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, encoding="utf-8",
                          errors="replace", cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, f"docs/gui.md:{line}:\n{proc.stderr[-3000:]}"
    assert proc.stdout.splitlines()[0] == "models/paper" and proc.stdout.splitlines()[1] == "[]"

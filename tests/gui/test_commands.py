"""Commands from plugins (``biom3d.cli_commands``, biom3d/cli/commands.py): found like importlib.metadata finds
them, added lazily, listed in help from a light module, and a broken one never takes the CLI down. Then the real
one: `biom3d gui` from biom3d-gui, without FastAPI or torch imported for `--help`."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from importlib import metadata
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from biom3d.cli.commands import add_plugin_commands, builtin_names, entry_points

MODULES = {
    "fx_cmd_good.py": '''
        import typer

        def register(app, name):
            @app.command(name, help="Say hello from a plugin.")
            def hello(who: str = "world") -> None:
                typer.echo(f"hello {who}")

        def nothing(app, name):
            pass

        group = typer.Typer(help="A group of plugin commands.")

        @group.command()
        def one() -> None:
            typer.echo("one ran")

        @group.command()
        def two() -> None:
            typer.echo("two ran")

        not_callable = 42
    ''',
    "fx_cmd_heavy.py": '''
        raise RuntimeError("this module must not be imported for another command")
    ''',
}
ENTRY_POINTS = {
    "biom3d_fxgood-1.0.dist-info": "hello = fx_cmd_good:register\ngrp = fx_cmd_good:group\nsilent = fx_cmd_good:nothing\n"
                                   "train = fx_cmd_good:register\nBad_Name = fx_cmd_good:register\n",
    "biom3d_fxbroken-2.0.dist-info": "broken = fx_cmd_missing_module:register\nodd = fx_cmd_good:not_callable\n",
    "biom3d_fxheavy-1.0.dist-info": "heavy = fx_cmd_heavy:register\n",
    "biom3d_fxdup-1.0.dist-info": "dup = fx_cmd_good:nothing\n",  # 'dup' twice: neither wins
    "biom3d_fxdup2-1.0.dist-info": "dup = fx_cmd_good:register\n",
}


@pytest.fixture
def site(tmp_path, monkeypatch) -> Path:
    for name, code in MODULES.items():
        (tmp_path / name).write_text(textwrap.dedent(code), encoding="utf-8")
    for info, entries in ENTRY_POINTS.items():
        folder = tmp_path / info
        folder.mkdir()
        dist, version = info.removesuffix(".dist-info").split("-")
        (folder / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist.replace('_', '-')}\nVersion: {version}\n\n", encoding="utf-8")
        (folder / "entry_points.txt").write_text(f"[console_scripts]\nx = y:z\n\n[biom3d.cli_commands]\n{entries}", encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    for module in ("fx_cmd_good", "fx_cmd_heavy"):
        monkeypatch.delitem(sys.modules, module, raising=False)
    return tmp_path


def _app() -> typer.Typer:
    app = typer.Typer(name="biom3d", no_args_is_help=True, add_completion=False, rich_markup_mode=None)

    @app.command()
    def train() -> None:
        """The built-in train."""
        typer.echo("built-in train")

    @app.command("eval")
    def evaluate() -> None:
        typer.echo("built-in eval")

    return app


def test_entry_points_match_importlib_metadata(site):
    ours = {(ep.name, ep.value, ep.dist) for ep in entry_points(path=[str(site)])}
    assert ("hello", "fx_cmd_good:register", "biom3d-fxgood") in ours
    assert ("dup", "fx_cmd_good:nothing", "biom3d-fxdup") in ours
    theirs = {(ep.name, ep.value, ep.dist.name) for ep in metadata.distributions(path=[str(site)])
              for ep in ep.entry_points if ep.group == "biom3d.cli_commands"}
    assert ours == theirs
    for group in ("console_scripts", "biom3d.plugins", "biom3d.cli_commands"):  # the real environment
        real = {(ep.name, ep.value) for ep in metadata.entry_points(group=group)}
        assert {(ep.name, ep.value) for ep in entry_points(group)} == real, group
    assert ("gui", "biom3d.gui.cli:register") in {(ep.name, ep.value) for ep in entry_points()}


def test_help_lists_every_plugin_command_and_the_broken_ones_say_why(site):
    app = _app()
    report = {(r.name, r.dist): r for r in add_plugin_commands(app, ["--help"], found=entry_points(path=[str(site)]))}
    states = {key: r.state for key, r in report.items()}
    assert states[("hello", "biom3d-fxgood")] == "loaded" and states[("grp", "biom3d-fxgood")] == "loaded"
    assert states[("dup", "biom3d-fxdup")] == states[("dup", "biom3d-fxdup2")] == "clash"  # two distributions
    assert states[("train", "biom3d-fxgood")] == "skipped" and "built-in" in report[("train", "biom3d-fxgood")].reason
    assert states[("Bad_Name", "biom3d-fxgood")] == "skipped"
    assert states[("broken", "biom3d-fxbroken")] == "failed" and "fx_cmd_missing_module" in report[("broken", "biom3d-fxbroken")].reason
    assert states[("odd", "biom3d-fxbroken")] == "failed" and states[("silent", "biom3d-fxgood")] == "failed"
    assert states[("heavy", "biom3d-fxheavy")] == "failed"  # its import raised: listed, not fatal
    runner = CliRunner()
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0, result.output
    for name in ("hello", "grp", "broken", "heavy", "train", "eval"):
        assert name in result.output
    assert "Say hello from a plugin." in result.output and "[unavailable" in result.output
    assert runner.invoke(app, ["hello", "--who", "lab"]).output == "hello lab\n"
    assert runner.invoke(app, ["grp", "two"]).output == "two ran\n"
    assert runner.invoke(app, ["train"]).output == "built-in train\n"  # a plugin cannot replace a built-in
    broken = runner.invoke(app, ["broken", "--any", "option"])
    assert broken.exit_code == 3 and "cannot be loaded" in broken.output and "pip install" in broken.output
    dup = runner.invoke(app, ["dup"])
    assert dup.exit_code == 3 and "biom3d-fxdup 1.0" in dup.output and "biom3d-fxdup2 1.0" in dup.output
    again = {r.name: r for r in add_plugin_commands(app, ["--help"], found=entry_points(path=[str(site)]))}
    assert again["hello"].reason == again["dup"].reason == "added already"  # a second call adds nothing twice
    names = [c.name for c in app.registered_commands]
    assert len(names) == len(set(names))
    assert sorted(builtin_names(app)) == sorted({"train", "eval", "hello", "grp", "broken", "odd", "silent", "heavy",
                                                 "dup"})


def test_only_what_the_command_line_needs_is_imported(site):
    found = entry_points(path=[str(site)])
    assert add_plugin_commands(_app(), ["train"], found=found) == []  # a built-in: nothing imported
    assert add_plugin_commands(_app(), ["--debug", "eval", "--help"], found=found) == []
    assert add_plugin_commands(_app(), ["--version"], found=found) == []
    assert "fx_cmd_good" not in sys.modules and "fx_cmd_heavy" not in sys.modules
    app = _app()
    report = add_plugin_commands(app, ["--debug", "hello", "--who", "x"], found=found)
    assert [(r.name, r.dist, r.state) for r in report] == [("hello", "biom3d-fxgood", "loaded")]
    assert "fx_cmd_heavy" not in sys.modules  # another command's module stays unimported
    assert add_plugin_commands(_app(), ["nosuchcommand"], found=found) == []


PROBE = r"""
import json, sys, time
start = time.perf_counter()
from biom3d.cli.app import app, main
from biom3d.cli.commands import add_plugin_commands
argv = sys.argv[2:]
report = add_plugin_commands(app, argv)
took = time.perf_counter() - start
try:
    rc = main(argv)
finally:
    with open(sys.argv[1], "w") as f:
        json.dump({"modules": sorted(sys.modules), "report": [r.__dict__ for r in report], "took": took}, f)
sys.exit(rc)
"""
HEAVY = ("torch", "numpy", "fastapi", "uvicorn", "starlette", "pydantic", "biom3d.gui.server", "biom3d.core",
         "importlib.metadata")


def _biom3d(args: list[str], tmp_path: Path):
    out = tmp_path / "probe.json"
    proc = subprocess.run([sys.executable, "-c", PROBE, str(out), *args], capture_output=True, text=True,
                          encoding="utf-8", errors="replace", timeout=120)
    return proc, json.loads(out.read_text(encoding="utf-8"))


def test_biom3d_help_lists_gui_without_importing_the_server(tmp_path):
    proc, probe = _biom3d(["--help"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "gui" in proc.stdout and "Open biom3d in a web browser" in proc.stdout
    assert {"name": "gui", "state": "loaded"}.items() <= next(r for r in probe["report"] if r["name"] == "gui").items()
    heavy = [m for m in probe["modules"] if m.startswith(HEAVY)]
    assert heavy == [], heavy
    print(f"entry points + biom3d.cli.app: {probe['took'] * 1000:.0f} ms")


def test_biom3d_gui_help_and_its_refusals(tmp_path):
    proc, probe = _biom3d(["gui", "--help"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    for option in ("--host", "--port", "--root", "--runs-dir", "--no-browser", "--no-token", "--max-upload-mb"):
        assert option in proc.stdout
    assert not [m for m in probe["modules"] if m.startswith(("fastapi", "uvicorn", "torch"))]
    proc, _ = _biom3d(["gui", "--host", "0.0.0.0", "--no-token", "--no-browser", "--runs-dir", str(tmp_path / "r")],
                      tmp_path)
    assert proc.returncode == 2 and "without a token" in proc.stderr and "Traceback" not in proc.stderr
    proc, _ = _biom3d(["gui", "--root", str(tmp_path / "missing"), "--no-browser"], tmp_path)
    assert proc.returncode == 2 and "not a folder" in proc.stderr

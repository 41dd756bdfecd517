"""Commands from other distributions: the ``biom3d.cli_commands`` entry-point group.

A distribution adds ``biom3d NAME`` by declaring::

    [project.entry-points."biom3d.cli_commands"]
    gui = "biom3d.gui.cli:register"

The value names either a ``typer.Typer`` app (it becomes the sub-command group ``biom3d NAME ...``) or a
callable ``register(app, name)`` that adds its command to the ``biom3d`` app, usually a thin Typer command
whose body imports the heavy code when it runs. The entry point's module is imported for ``biom3d --help``
(to list the command with its help), so it must be light: typer and the stdlib.

Why not :func:`importlib.metadata.entry_points`: importing ``importlib.metadata`` costs ~50 ms (email,
zipfile, csv), a fifth of the `biom3d --help` budget, for one group. :func:`entry_points` below reads the
``entry_points.txt`` of each distribution on ``sys.path`` directly (first one of a name wins, as
importlib.metadata does); ``tests/gui/test_commands.py`` checks both agree.

Nothing here stops the CLI: an entry point that fails to import or to register becomes a command that says
why (exit 3) and is listed as unavailable in `biom3d --help`; so does a name several distributions offer
(neither wins: install order never decides). A built-in command's name is never taken over. :func:`add_plugin_commands` only loads what a command line
may need: none for a built-in command, the one named, or all of them for help.
"""

from __future__ import annotations

import configparser
import os
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer

GROUP = "biom3d.cli_commands"
#: options of the `biom3d` app itself, which come before the command name
ROOT_FLAGS = frozenset({"--debug", "--version", "--help", "-h"})


@dataclass(frozen=True)
class EntryPoint:
    """One ``name = module:attr`` line of a distribution's entry_points.txt."""

    name: str
    value: str
    dist: str
    version: str

    @property
    def module(self) -> str:
        return self.value.partition(":")[0].strip()

    @property
    def attr(self) -> str:
        return self.value.partition(":")[2].strip()

    def load(self) -> Any:
        import importlib

        obj: Any = importlib.import_module(self.module)
        for part in filter(None, self.attr.split(".")):
            obj = getattr(obj, part)
        return obj


@dataclass(frozen=True)
class CommandPlugin:
    """What became of one entry point: ``loaded``; ``failed`` or ``clash`` (listed: the command says why, exit
    3); ``skipped`` (a name taken already, or not a command name)."""

    name: str
    dist: str
    version: str
    value: str
    state: str
    reason: str = ""


def entry_points(group: str = GROUP, path: Iterable[str] | None = None) -> list[EntryPoint]:
    """The entry points of ``group`` of every distribution found on ``path`` (default ``sys.path``), sorted
    by name then distribution; a distribution found twice counts once (the first, as importlib does)."""
    seen: set[str] = set()
    found: list[EntryPoint] = []
    header = f"[{group}]"
    for folder in sys.path if path is None else path:
        try:
            entries = sorted(os.scandir(folder or "."), key=lambda e: e.name)
        except OSError:
            continue
        for entry in entries:
            stem, dot, kind = entry.name.rpartition(".")
            if not dot or kind not in ("dist-info", "egg-info"):
                continue
            dist, _, version = stem.partition("-")
            key = re.sub(r"[-_.]+", "-", dist).lower()
            if key in seen:
                continue
            seen.add(key)
            try:
                text = Path(entry.path, "entry_points.txt").read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError):
                continue
            if header not in text:
                continue
            parser = configparser.ConfigParser(delimiters=("=",), interpolation=None)
            parser.optionxform = str  # type: ignore[assignment,method-assign]  # names are case-sensitive
            try:
                parser.read_string(text)
            except configparser.Error:
                continue
            version = _version(entry.path) or version.split("-")[0]
            found += [EntryPoint(name.strip(), value.strip(), _dist_name(entry.path) or dist, version)
                      for name, value in parser.items(group)]
    return sorted(found, key=lambda ep: (ep.name, ep.dist))


def add_plugin_commands(app: typer.Typer, argv: Sequence[str] | None = None, *, group: str = GROUP,
                        found: list[EntryPoint] | None = None) -> list[CommandPlugin]:
    """Add to ``app`` the plugin commands that ``argv`` (default ``sys.argv[1:]``) may run: none when it
    names a built-in command, the one it names, or every one for `biom3d`, `biom3d --help` and names that
    are not built in. Safe to call again (a command already added is not added twice)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    taken = builtin_names(app)
    wanted = _command_word(argv)
    if wanted is not None and wanted in taken and wanted not in _added(app):
        return []
    if wanted is None and "--version" in argv:  # eager: prints and exits before any command
        return []
    by_name: dict[str, list[EntryPoint]] = {}
    for ep in entry_points(group) if found is None else found:
        if wanted is None or ep.name == wanted:
            by_name.setdefault(ep.name, []).append(ep)
    report: list[CommandPlugin] = []
    for name, eps in by_name.items():
        if len(eps) > 1 and name not in taken:  # never install order: neither wins, the command says why
            offered = ", ".join(f"{ep.dist} {ep.version} ({ep.value})" for ep in eps)
            _add_unavailable(app, eps[0], f"offered by several distributions: {offered}; uninstall all but one",
                             clash=True)
            _added(app).add(name)
            report += [CommandPlugin(ep.name, ep.dist, ep.version, ep.value, "clash", offered) for ep in eps]
        else:
            report += [_add(app, ep, taken) for ep in eps]
        taken = builtin_names(app)
    return report


def builtin_names(app: typer.Typer) -> set[str]:
    """Names of the commands and groups ``app`` has (what Typer will call them)."""
    names = {info.name or _command_name(info.callback) for info in app.registered_commands}
    names |= {info.name or (info.typer_instance.info.name if info.typer_instance else None)
              for info in app.registered_groups}
    return {n for n in names if n}


def _add(app: typer.Typer, ep: EntryPoint, taken: set[str]) -> CommandPlugin:
    record = dict(name=ep.name, dist=ep.dist, version=ep.version, value=ep.value)
    if ep.name in _added(app):
        return CommandPlugin(**record, state="loaded", reason="added already")
    if ep.name in taken:
        return CommandPlugin(**record, state="skipped", reason=f"'biom3d {ep.name}' is a built-in command; the "
                             "plugin's is not added")
    if not re.fullmatch(r"[a-z0-9][a-z0-9-]*", ep.name):
        return CommandPlugin(**record, state="skipped", reason="a command name is lowercase letters, digits, '-'")
    commands, groups = len(app.registered_commands), len(app.registered_groups)
    try:
        obj = ep.load()
        if isinstance(obj, typer.Typer):
            app.add_typer(obj, name=ep.name)
        elif callable(obj):
            obj(app, ep.name)
        else:
            raise TypeError(f"{ep.value} is a {type(obj).__name__}, not a typer.Typer or a register(app, name) "
                            "function")
        if ep.name not in builtin_names(app):
            raise TypeError(f"{ep.value} registered no command named '{ep.name}'")
    except Exception as exc:  # a plugin's bug must not take the CLI down: the command tells why instead
        del app.registered_commands[commands:], app.registered_groups[groups:]  # what it half-registered
        reason = f"{type(exc).__name__}: {exc}"
        _add_unavailable(app, ep, reason)
        _added(app).add(ep.name)
        return CommandPlugin(**record, state="failed", reason=reason)
    _added(app).add(ep.name)
    return CommandPlugin(**record, state="loaded")


def _add_unavailable(app: typer.Typer, ep: EntryPoint, reason: str, *, clash: bool = False) -> None:
    """A command that only says why the real one is not there (exit 3, a plugin problem)."""
    if clash:
        message, short = f"command '{ep.name}' is {reason}", "several distributions offer it"
    else:
        message = (f"command '{ep.name}' from {ep.dist} {ep.version} cannot be loaded ({ep.value}): {reason}. "
                   f"Reinstall it (pip install --force-reinstall {ep.dist}) or uninstall it")
        short = f"{ep.dist} failed to load"

    @app.command(ep.name, help=f"[unavailable: {short}] {reason}", add_help_option=False,
                 context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
    def unavailable() -> None:
        typer.echo(f"error: {message}", err=True)
        raise typer.Exit(3)


def _added(app: typer.Typer) -> set[str]:
    """Names this module added to ``app`` (kept on the app, so a second call adds nothing twice)."""
    if not hasattr(app, "_biom3d_plugin_commands"):
        app._biom3d_plugin_commands = set()  # type: ignore[attr-defined]
    return app._biom3d_plugin_commands  # type: ignore[attr-defined]


def _command_word(argv: Sequence[str]) -> str | None:
    """The command name in ``argv`` (the first word that is not a root flag), None when there is none."""
    for word in argv:
        if word in ROOT_FLAGS:
            continue
        return None if word.startswith("-") else word
    return None


def _command_name(callback: Callable[..., Any] | None) -> str | None:
    return callback.__name__.lower().replace("_", "-") if callback is not None else None


def _dist_name(info_dir: str) -> str | None:
    return _metadata_field(info_dir, "Name")


def _version(info_dir: str) -> str | None:
    return _metadata_field(info_dir, "Version")


def _metadata_field(info_dir: str, field: str) -> str | None:
    """A header of METADATA (PKG-INFO for egg-info), read up to the first blank line."""
    for name in ("METADATA", "PKG-INFO"):
        try:
            with open(Path(info_dir, name), encoding="utf-8") as f:
                for line in f:
                    if not line.strip():
                        break
                    key, sep, value = line.partition(":")
                    if sep and key == field:
                        return value.strip()
        except (OSError, UnicodeDecodeError):
            continue
    return None

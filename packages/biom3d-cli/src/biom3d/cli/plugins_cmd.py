"""`biom3d plugins`: states of every plugin and, on request, their components. Never imports torch."""

from __future__ import annotations

import json

import typer

from biom3d.cli.tables import table
from biom3d.core.errors import InputError, did_you_mean
from biom3d.core.specs import KINDS


def list_plugins(*, components: bool, kind: str | None, as_json: bool) -> None:
    kind = _kind(kind)
    registry = _registry()
    comps = registry.components(kind) if kind else registry.components()
    if as_json:
        payload = {"plugins": [p.as_dict() | {"components": _count(registry, p.name)} for p in registry.plugins.values()],
                   "format_clashes": [dict(zip(("kind", "suffix", "claimed_by", "winner"), r, strict=True))
                                      for r in _clash_rows(registry)]}
        if components:
            payload["components"] = [c.as_dict() for c in comps]
        typer.echo(json.dumps(payload, indent=2))
        return
    rows = [
        (p.name, p.dist, p.version, p.state, _count(registry, p.name) if p.state == "loaded" else "", _why(p))
        for p in registry.plugins.values()
    ]
    typer.echo(table(["plugin", "distribution", "version", "state", "components", "reason / notes"], rows, max_width=400))
    clashes = _clash_rows(registry)
    if clashes:
        typer.echo("")
        typer.echo("Formats several plugins read or write (the first wins; choose with reader:/writer: or --reader/--writer):")
        typer.echo(table(["kind", "suffix", "claimed by (priority)", "winner"], clashes, max_width=200))
    if components:
        typer.echo("")
        typer.echo(_components_table(comps))


def show_plugin(name: str, *, as_json: bool) -> None:
    from biom3d.core.errors import InputError

    registry = _registry()
    matches = [p for key, p in registry.plugins.items() if key == name or p.name == name]
    if not matches:
        known = ", ".join(p.name for p in registry.plugins.values())
        raise InputError(f"no plugin named '{name}'; installed plugins: {known}")
    for info in matches:
        comps = [c for c in registry.components() if c.plugin is info]
        if as_json:
            typer.echo(json.dumps(info.as_dict() | {"components": [c.as_dict() for c in comps]}, indent=2))
            continue
        typer.echo(f"{info.name}: {info.state}")
        typer.echo(f"  distribution: {info.dist or '-'} {info.version or ''}".rstrip())
        typer.echo(f"  module:       {info.module or '-'}")
        if info.import_time is not None:
            typer.echo(f"  import time:  {info.import_time * 1000:.1f} ms")
        if info.reason:
            typer.echo(f"  reason:       {info.reason}")
        for note in info.notes:
            typer.echo(f"  note:         {note}")
        if comps:
            typer.echo("")
            typer.echo(_components_table(comps))


def _clash_rows(registry) -> list[tuple[str, str, str, str]]:
    rows = []
    for kind in ("reader", "writer"):
        for suffix, comps in registry.suffix_clashes(kind):
            top = [c for c in comps if c.spec.priority == comps[0].spec.priority]
            winner = comps[0].qid if len(top) == 1 else "tie: an error until one is chosen"
            rows.append((kind, suffix, ", ".join(f"{c.qid} ({c.spec.priority})" for c in comps), winner))
    return rows


def _components_table(comps) -> str:
    default = _default_stack() if any(c.kind == "stack" for c in comps) else None
    rows = [(c.kind, c.qid, ", ".join(c.spec.aliases), _extra(c, default), c.spec.summary) for c in comps]
    return table(["kind", "id", "aliases", "suffixes/roles/priority", "summary"], rows, max_width=80)


def _default_stack() -> str | None:
    from biom3d.core.stacks import choose_stack

    chosen = choose_stack(_registry(), None)
    return chosen.qid if chosen is not None else None


def _extra(comp, default_stack: str | None = None) -> str:
    d = comp.as_dict()
    if comp.kind == "stack":
        return f"priority {d['priority']}" + (" (default)" if comp.qid == default_stack else "")
    if "suffixes" in d:
        return " ".join(d["suffixes"]) + (" (folders)" if comp.spec.directory else "")
    return ",".join(d.get("roles", []))


def _count(registry, plugin: str) -> int:
    return sum(1 for c in registry.components() if c.plugin.name == plugin)


def _why(info) -> str:
    parts = [info.reason] if info.reason else []
    return "; ".join(parts + list(info.notes))


def _registry():
    from biom3d.core.discovery import get_registry

    return get_registry()


def _kind(kind: str | None) -> str | None:
    """``--kind``'s value as a kind, the plural too (``models``; losses are metrics); anything else is refused
    with the kinds."""
    if kind is None or kind in KINDS:
        return kind
    singular = {"loss": "metric", "losses": "metric"}.get(kind, kind.removesuffix("s"))
    if singular in KINDS:
        return singular
    raise InputError(f"--kind {kind!r}: no such kind of component{did_you_mean(kind, KINDS)}; the kinds are "
                     f"{', '.join(KINDS)}")

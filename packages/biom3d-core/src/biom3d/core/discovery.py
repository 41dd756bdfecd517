"""Plugin discovery: one entry-point group, each plugin loaded on its own so one failure stays one failure.

pluggy's ``load_setuptools_entrypoints`` stops at the first broken plugin, so we walk the entry points
ourselves: sort by name, block or reject before importing, import in a try, check the hooks, register.
Every plugin ends in one state: loaded, failed, blocked, incompatible or shadowed.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import pluggy

from biom3d.core import hookspecs
from biom3d.core._version import __version__ as CORE_VERSION
from biom3d.core.errors import PluginError, SpecError, did_you_mean
from biom3d.core.registry import Registry
from biom3d.core.specs import KINDS, NamedSpec

GROUP = "biom3d.plugins"
CORE = "core"
BUILTINS = "biom3d.core.builtins.plugin"  # core's own method: a plugin like the others, that cannot be blocked
ENV_DISABLE = "BIOM3D_DISABLE_PLUGINS"
ENV_ALLOW = "BIOM3D_PLUGINS"
ENV_STRICT = "BIOM3D_STRICT_PLUGINS"
STATES = ("loaded", "failed", "blocked", "incompatible", "shadowed")


@dataclass
class PluginInfo:
    """What we know about one plugin, whatever became of it."""

    name: str
    dist: str | None = None
    version: str | None = None
    state: str = "loaded"
    reason: str | None = None
    module: str | None = None
    import_time: float | None = None
    notes: list[str] = field(default_factory=list)
    error: BaseException | None = field(default=None, repr=False, compare=False)

    @property
    def label(self) -> str:
        """``'acme' (biom3d-acme 0.2.0)``: how errors name a plugin."""
        if self.dist:
            return f"plugin '{self.name}' ({self.dist} {self.version})"
        return f"plugin '{self.name}'"

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "dist": self.dist,
            "version": self.version,
            "state": self.state,
            "reason": self.reason,
            "module": self.module,
            "import_time": None if self.import_time is None else round(self.import_time, 4),
            "notes": list(self.notes),
        }


def discover(
    *,
    environ: Mapping[str, str] | None = None,
    entry_points: Iterable[metadata.EntryPoint] | None = None,
    extra: Iterable[tuple[str, object]] = (),
    builtins: bool = True,
):
    """Find, filter, import and register every plugin; return the Registry of what they offer.

    ``extra`` registers in-process plugins (name, module-or-object), as the pytest fixture does.
    """
    env = os.environ if environ is None else environ
    strict = env.get(ENV_STRICT, "").strip().lower() in {"1", "true", "yes", "on"}
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    infos: dict[str, PluginInfo] = {}

    if builtins:
        import importlib

        core_plugin = importlib.import_module(BUILTINS)  # by name, as an entry point would be
        infos[CORE] = PluginInfo(CORE, "biom3d-core", CORE_VERSION, module=core_plugin.__name__)
        pm.register(core_plugin, name=CORE)

    eps = list(metadata.entry_points(group=GROUP) if entry_points is None else entry_points)
    for ep in sorted(eps, key=lambda e: e.name):  # stable: same-name eps keep sys.path order
        _load_entry_point(pm, infos, ep, env, strict)
    for name, obj in extra:
        info = PluginInfo(name, module=getattr(obj, "__name__", type(obj).__name__))
        if name in infos:
            _fail(info, f"plugin name '{name}' is already taken", None, strict, state="shadowed")
            infos[f"{name}#{len(infos)}"] = info
            continue
        infos[name] = info
        _register(pm, info, obj, strict)

    records = _collect(pm, infos, strict)
    return Registry(infos, records)


def _load_entry_point(pm, infos: dict[str, PluginInfo], ep, env: Mapping[str, str], strict: bool) -> None:
    dist = getattr(ep, "dist", None)
    info = PluginInfo(
        ep.name,
        dist=dist.metadata["Name"] if dist is not None else None,
        version=dist.version if dist is not None else None,
        module=ep.value,
    )
    if ep.name in infos:
        owner = infos[ep.name]
        why = "is reserved for biom3d-core's builtins" if ep.name == CORE else f"is already provided by {owner.label}"
        _fail(info, f"plugin name '{ep.name}' {why}; this one is ignored", None, False, state="shadowed")
        infos[f"{ep.name}@{info.dist}"] = info
        return
    infos[ep.name] = info

    blocked = _blocked_reason(ep.name, env)
    if blocked:
        info.state, info.reason = "blocked", blocked
        return
    problem = _core_requirement_problem(dist)
    if problem:
        info.state, info.reason = "incompatible", problem
        return

    start = time.perf_counter()
    try:
        obj = ep.load()
    except Exception as exc:  # a broken plugin must never crash the host
        _fail(info, f"import of {ep.value} failed: {type(exc).__name__}: {exc}", exc, strict)
        return
    finally:
        info.import_time = time.perf_counter() - start
    _register(pm, info, obj, strict)


def _register(pm: pluggy.PluginManager, info: PluginInfo, obj: object, strict: bool) -> None:
    known = {kind.hook for kind in KINDS.values()}
    implemented = [a for a in dir(obj) if pm.parse_hookimpl_opts(obj, a) is not None]
    unknown = [a for a in implemented if a not in known]
    if unknown:
        hints = [f"'{u}'" + did_you_mean(u, known) for u in unknown]
        _fail(info, f"implements unknown hook {', '.join(hints)}", None, strict)
        return
    try:
        pm.register(obj, name=info.name)
    except Exception as exc:
        _fail(info, f"registration failed: {type(exc).__name__}: {exc}", exc, strict)
        return
    if not implemented:
        info.notes.append("implements no biom3d hook")


def _collect(pm: pluggy.PluginManager, infos: dict[str, PluginInfo], strict: bool) -> list[tuple[str, NamedSpec]]:
    """Call each plugin's hooks one by one so every record is attributed and every failure isolated."""
    offered: dict[str, list[NamedSpec]] = {}
    for kind in KINDS.values():
        for impl in getattr(pm.hook, kind.hook).get_hookimpls():
            info = infos[impl.plugin_name]
            if info.state != "loaded":
                continue
            try:
                if impl.hookwrapper or impl.wrapper:
                    raise SpecError(f"{kind.hook} is a hook wrapper; biom3d hooks only yield records")
                specs = _as_specs(impl.function(), kind.hook, kind.spec)
                seen = {s.name for s in offered.get(info.name, []) if s.kind == kind.name}
                for spec in specs:
                    if spec.name in seen:
                        raise SpecError(f"{kind.name} '{spec.name}' is offered twice")
                    seen.add(spec.name)
                offered.setdefault(info.name, []).extend(specs)
            except Exception as exc:
                _fail(info, f"{kind.hook}() gave a bad record: {type(exc).__name__}: {exc}", exc, strict)
                pm.unregister(name=info.name)
    return [(name, spec) for name, specs in offered.items() if infos[name].state == "loaded" for spec in specs]


def _as_specs(result: object, hook: str, spec_cls: type[NamedSpec]) -> list[NamedSpec]:
    if result is None:
        return []
    items = [result] if isinstance(result, NamedSpec) else list(result)  # type: ignore[call-overload]
    for item in items:
        if not isinstance(item, spec_cls):
            raise SpecError(f"{hook} yielded {type(item).__name__} {str(item)[:60]!r}, expected {spec_cls.__name__}")
    return items


def _fail(info: PluginInfo, reason: str, exc: BaseException | None, strict: bool, *, state: str = "failed") -> None:
    info.state, info.reason, info.error = state, reason.splitlines()[0] if reason else reason, exc
    if strict:
        raise PluginError(f"{info.label} {state}: {reason} ({ENV_STRICT}=1)") from exc


def _blocked_reason(name: str, env: Mapping[str, str]) -> str | None:
    disabled = _name_list(env.get(ENV_DISABLE))
    if name in disabled:
        return f"disabled by {ENV_DISABLE}"
    allow = env.get(ENV_ALLOW)
    if allow is not None and allow.strip() and name not in _name_list(allow):
        return f"not in the {ENV_ALLOW} allowlist"
    return None


def _name_list(value: str | None) -> set[str]:
    return {part.strip() for part in (value or "").split(",") if part.strip()}


def _core_requirement_problem(dist: metadata.Distribution | None) -> str | None:
    """Why this distribution's ``biom3d-core`` requirement excludes the installed core, if it does.

    Parsed with a regex plus ``packaging.specifiers`` rather than ``packaging.requirements``: the latter costs
    ~70 ms of import on every `biom3d plugins`; markers (rare here) still go through ``packaging.markers``.
    """
    if dist is None:
        return None
    for line in dist.requires or []:
        match = _REQUIREMENT.match(line)
        if not match or re.sub(r"[-_.]+", "-", match["name"]).lower() != "biom3d-core":
            continue
        if match["marker"]:
            from packaging.markers import InvalidMarker, Marker

            try:
                if not Marker(match["marker"]).evaluate({"extra": ""}):
                    continue
            except InvalidMarker:
                continue
        from packaging.specifiers import InvalidSpecifier, SpecifierSet

        try:
            spec = SpecifierSet(match["spec"].strip().strip("()"))
        except InvalidSpecifier:
            return f"declares an unreadable biom3d-core requirement {line!r}"
        if not spec.contains(CORE_VERSION, prereleases=True):
            return f"requires biom3d-core{spec} but biom3d-core {CORE_VERSION} is installed"
    return None


_REQUIREMENT = re.compile(r"^\s*(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*(?P<spec>[^;]*)(?:;(?P<marker>.*))?$")


_default: Registry | None = None


def get_registry() -> Registry:
    """The process-wide registry of installed plugins, discovered once on first use."""
    global _default
    if _default is None:
        _default = discover()
    return _default


def set_registry(registry: Registry | None) -> Registry | None:
    """Swap the process-wide registry (tests, embedding applications); returns the previous one."""
    global _default
    previous, _default = _default, registry
    return previous

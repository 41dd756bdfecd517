"""The registry: every component offered by loaded plugins, addressed by qualified id ``plugin/name``.

A qualified id always resolves. A short name or alias resolves only when exactly one loaded plugin offers it;
otherwise the error lists the candidates. Nothing is decided by install order or registration order.
"""

from __future__ import annotations

import difflib
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from biom3d.core.errors import InputError, PluginError
from biom3d.core.specs import KINDS, NamedSpec, ReaderSpec, StackSpec, WriterSpec

if TYPE_CHECKING:  # pragma: no cover
    from biom3d.core.discovery import PluginInfo


class ResolutionError(InputError):
    """A name does not resolve to exactly one component."""


class FormatTie(ResolutionError):
    """Several readers (or writers) claim a file's format at the same priority: the user must choose.
    ``reason`` is the message without the file name, for listings of many files."""

    def __init__(self, filename: str, reason: str):
        super().__init__(f"{filename}: {reason}")
        self.reason = reason


@dataclass(frozen=True)
class Component:
    """One offered component: its spec and the plugin that offered it."""

    plugin: PluginInfo
    spec: NamedSpec

    @property
    def kind(self) -> str:
        return self.spec.kind

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def qid(self) -> str:
        return f"{self.plugin.name}/{self.spec.name}"

    def load(self) -> Any:
        """Import the target; an import error names the component, the plugin and its distribution."""
        try:
            return self.spec.load()
        except Exception as exc:
            raise PluginError(
                f"{self.kind} '{self.qid}': {self.plugin.label} could not load {self.spec.target!r}: "
                f"{type(exc).__name__}: {exc}"
            ) from exc

    def validate_params(self, params: Mapping[str, Any] | BaseModel | None, context: Any = None) -> BaseModel:
        """Validate raw params against the spec's model; ``context`` reaches pydantic validators."""
        if isinstance(params, self.spec.params):
            return params
        if isinstance(params, BaseModel):
            params = params.model_dump()
        return self.spec.params.model_validate(dict(params or {}), context={"run": context})

    def build(self, params: Mapping[str, Any] | BaseModel | None = None, ctx: Any = None) -> Any:
        """Call the factory target as ``factory(validated_params, ctx)``; bad params raise the ConfigError the CLI
        shows (paths, "did you mean"), not pydantic's raw error."""
        from pydantic import ValidationError

        from biom3d.core.errors import ConfigError
        from biom3d.core.validation_errors import problems_from

        try:
            validated = self.validate_params(params, ctx)
        except ValidationError as exc:
            raise ConfigError(problems_from(exc, prefix="params", model=self.spec.params),
                              source=f"{self.kind} '{self.qid}'") from exc
        return self.load()(validated, ctx)

    def as_dict(self) -> dict[str, Any]:
        d = {
            "kind": self.kind,
            "id": self.qid,
            "name": self.name,
            "aliases": list(self.spec.aliases),
            "summary": self.spec.summary,
            "plugin": self.plugin.name,
        }
        target = getattr(self.spec, "target", None)
        if target is not None:
            d["target"] = target if isinstance(target, str) else repr(target)
        if isinstance(self.spec, StackSpec):
            d["priority"] = self.spec.priority
            d["extends"] = self.spec.extends
            d["components"] = dict(self.spec.components)
        if isinstance(self.spec, ReaderSpec | WriterSpec):
            d["suffixes"] = list(self.spec.suffixes)
            d["priority"] = self.spec.priority
        roles = getattr(self.spec, "roles", None)
        if roles:
            d["roles"] = sorted(roles)
        return d


class Registry:
    """Loaded components by kind, with name resolution and plugin states."""

    def __init__(self, plugins: Mapping[str, PluginInfo], records: Iterable[tuple[str, NamedSpec]]):
        self.plugins: dict[str, PluginInfo] = dict(plugins)
        self._by_kind: dict[str, list[Component]] = defaultdict(list)
        for plugin_name, spec in records:
            self._by_kind[spec.kind].append(Component(self.plugins[plugin_name], spec))
        for comps in self._by_kind.values():
            comps.sort(key=lambda c: c.qid)
        self._note_clashes()

    # -- queries -----------------------------------------------------------------------------------------
    def components(self, kind: str | None = None) -> list[Component]:
        if kind is None:
            return [c for k in KINDS for c in self._by_kind.get(k, [])]
        _check_kind(kind)
        return list(self._by_kind.get(kind, []))

    def resolve(self, kind: str, name: str) -> Component:
        """The one component ``name`` designates, or a ResolutionError that says what to write instead."""
        _check_kind(kind)
        if not isinstance(name, str) or not name:
            raise ResolutionError(f"a {kind} name must be a non-empty string, got {name!r}")
        comps = self._by_kind.get(kind, [])
        if "/" in name:
            plugin, _, short = name.partition("/")
            hits = [c for c in comps if c.plugin.name == plugin and short in c.spec.names]
            if hits:
                return hits[0]
            info = self.plugins.get(plugin)
            if info is not None and info.state != "loaded":
                raise ResolutionError(f"unknown {kind} '{name}': {info.label} {state_phrase(info)}: {info.reason}")
            if info is None:
                installed = ", ".join(sorted(p.name for p in self.plugins.values() if p.state == "loaded"))
                hint = self._not_found(kind, name, short).partition(". ")[2]
                raise ResolutionError(f"unknown {kind} '{name}': no plugin '{plugin}' is installed (installed: "
                                      f"{installed}); install the distribution that provides it"
                                      + (f". {hint}" if hint else ""))
            raise ResolutionError(self._not_found(kind, name, short))
        hits = [c for c in comps if name in c.spec.names]
        if len(hits) == 1:
            return hits[0]
        if hits:
            ids = ", ".join(c.qid for c in hits)
            raise ResolutionError(
                f"{kind} name '{name}' is ambiguous: offered by several plugins ({ids}); write one of these qualified ids"
            )
        raise ResolutionError(self._not_found(kind, name, name))

    def stacks(self) -> list[Component]:
        """Installed stacks, the default first: highest priority, then qualified id (never install order)."""
        return sorted(self.components("stack"), key=lambda c: (-c.spec.priority, c.qid))  # type: ignore[attr-defined]

    def default_stack(self) -> Component | None:
        """The stack a config without ``stack:`` uses."""
        stacks = self.stacks()
        return stacks[0] if stacks else None

    def reader_for(self, path: str | Path, choice: str | None = None) -> Component:
        """The reader for ``path``: ``choice`` (the config's ``reader:`` / ``--reader``) when it reads this file,
        else directory readers for folders, else the longest suffix, then the highest priority. An exact tie is
        an error that lists the candidates: never decided by install order."""
        return self._file_component("reader", Path(path), choice)

    def writer_for(self, path: str | Path, choice: str | None = None) -> Component:
        """The writer for ``path``'s format, by the same rules (``choice``: ``writer:`` / ``--writer``)."""
        return self._file_component("writer", Path(path), choice)

    def suffix_clashes(self, kind: str) -> list[tuple[str, list[Component]]]:
        """Suffixes several plugins' ``kind`` components claim, each with its claimants, the winner first."""
        claims: dict[str, list[Component]] = defaultdict(list)
        for c in self.components(kind):
            for suffix in c.spec.suffixes:  # type: ignore[attr-defined]
                claims[suffix].append(c)
        return [(suffix, sorted(comps, key=lambda c: (-c.spec.priority, c.qid)))  # type: ignore[attr-defined]
                for suffix, comps in sorted(claims.items()) if len({c.plugin.name for c in comps}) > 1]

    def suffixes(self, kind: str = "reader") -> list[str]:
        return sorted({s for c in self.components(kind) for s in c.spec.suffixes})  # type: ignore[attr-defined]

    def used_plugins(self, qids: Iterable[str]) -> dict[str, dict[str, Any]]:
        """Plugin -> dist/version/components for a set of qualified ids (what a run folder records)."""
        out: dict[str, dict[str, Any]] = {}
        for qid in qids:
            plugin = qid.partition("/")[0]
            info = self.plugins.get(plugin)
            entry = out.setdefault(plugin, {"dist": info and info.dist, "version": info and info.version, "components": []})
            entry["components"].append(qid)
        return out

    # -- helpers -----------------------------------------------------------------------------------------
    def _file_component(self, kind: str, path: Path, choice: str | None = None) -> Component:
        if choice:
            chosen = self.resolve(kind, choice)
            if chosen.spec.directory if path.is_dir() else chosen.spec.matches(path.name):  # type: ignore[attr-defined]
                return chosen
        comps = self.components(kind)
        if path.is_dir():
            scored = [(0, c.spec.priority, c) for c in comps if c.spec.directory]
        else:
            scored = [(len(m), c.spec.priority, c) for c in comps if (m := c.spec.matches(path.name))]
        scored.sort(key=lambda t: (-t[0], -t[1], t[2].qid))
        if not scored:
            what = "folders" if path.is_dir() else f"'{''.join(path.suffixes) or path.name}' files"
            offered = "; ".join(f"{c.qid} ({' '.join(c.spec.suffixes) or 'folders'})" for c in comps) or "none"
            raise ResolutionError(f"no {kind} for {path}: no installed {kind} handles {what} (installed {kind}s: "
                                  f"{offered}); choose one with `{kind}:` in the config or --{kind}, or install a "
                                  f"plugin with a {kind} for this format")
        tied = [c for n, prio, c in scored if (n, prio) == scored[0][:2]]
        if len(tied) > 1:
            ids = ", ".join(c.qid for c in tied)
            raise FormatTie(path.name, f"{kind}s {ids} claim this format at the same priority; choose one with "
                            f"`{kind}:` in the config or --{kind} (e.g. --{kind} {tied[0].qid})")
        return scored[0][2]

    def _not_found(self, kind: str, name: str, short: str) -> str:
        comps = self._by_kind.get(kind, [])
        choices: dict[str, str] = {}
        for c in comps:
            for n in (*c.spec.names, c.qid):
                choices[n.lower()] = n
        close = difflib.get_close_matches(name.lower(), list(choices), n=3, cutoff=0.6)
        close += [k for k in difflib.get_close_matches(short.lower(), list(choices), n=3, cutoff=0.6) if k not in close]
        msg = f"unknown {kind} '{name}'"
        if close:
            msg += ". Did you mean: " + ", ".join(f"'{choices[k]}'" for k in close[:3]) + "?"
        elif comps:
            msg += f". Available: {', '.join(c.qid for c in comps)}"
        else:
            msg += f". No installed plugin offers a {kind}"
        broken = [p for p in self.plugins.values() if p.state in ("failed", "incompatible")]
        if broken:
            msg += ". Plugins that did not load and might provide it: " + "; ".join(
                f"{p.label} {state_phrase(p)}: {p.reason}" for p in broken
            )
        return msg

    def _note_clashes(self) -> None:
        stacks = self.stacks()
        tied = [s for s in stacks if stacks and s.spec.priority == stacks[0].spec.priority]  # type: ignore[attr-defined]
        if len(tied) > 1:  # the default is then the first qualified id: say so rather than let it look chosen
            ids = ", ".join(s.qid for s in tied)
            note = (f"stacks {ids} share the top priority {tied[0].spec.priority}; the default is "  # type: ignore[attr-defined]
                    f"'{tied[0].qid}' (alphabetical): set `stack:` in configs to choose")
            for s in tied:
                if note not in s.plugin.notes:
                    s.plugin.notes.append(note)
        for kind, comps in self._by_kind.items():
            owners: dict[str, set[str]] = defaultdict(set)
            for c in comps:
                for n in c.spec.names:
                    owners[n].add(c.plugin.name)
            for short, plugins in owners.items():
                if len(plugins) > 1:
                    for p in sorted(plugins):
                        others = ", ".join(self.plugins[o].label for o in sorted(plugins - {p}))
                        note = f"{kind} name '{short}' is also offered by {others}: configs must use '{p}/{short}'"
                        if note not in self.plugins[p].notes:
                            self.plugins[p].notes.append(note)


def state_phrase(info: PluginInfo) -> str:
    """``failed to load``, ``is blocked``...: how a message says what became of a plugin."""
    return {"failed": "failed to load", "blocked": "is blocked", "incompatible": "is incompatible",
            "shadowed": "is shadowed"}.get(info.state, f"is {info.state}")


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown component kind {kind!r}; expected one of {', '.join(KINDS)}")

"""Stacks: which components fill the slots a config leaves out. Plugins declare them (``biom3d_stacks``), so
the framework never names another distribution's component.

A slot's envelope comes from, in order: the config itself, the chosen stack (``stack:`` or ``--stack``), the
stacks that one ``extends``. With no ``stack:``, the installed stack of highest priority is chosen. Callbacks
are the exception: a config's (and an extending stack's) are added to the list below it, since checkpoints and
logs are callbacks that a list naming one more must not drop.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from biom3d.core.errors import Problem
from biom3d.core.registry import ResolutionError
from biom3d.core.specs import LIST_SLOTS, SLOTS

if TYPE_CHECKING:  # pragma: no cover
    from biom3d.core.registry import Component, Registry


def choose_stack(registry: Registry, name: str | None) -> Component | None:
    """The stack ``name`` designates, else the default: the highest-priority stack whose components are all
    installed (a stack naming another distribution's dataset is complete only with it), else the
    highest-priority one, so that its errors say what is missing. None when no plugin declares a stack."""
    if name:
        return registry.resolve("stack", name)
    stacks = registry.stacks()
    complete = [s for s in stacks if not missing_components(registry, s)]
    return (complete or stacks or [None])[0]


def missing_components(registry: Registry, stack: Component) -> list[str]:
    """Ids in ``stack`` (and the stacks it extends) that no loaded plugin offers, with the reason."""
    try:
        envelopes = stack_envelopes(registry, stack)
    except ResolutionError as exc:
        return [str(exc)]
    missing = []
    for slot, value in envelopes.items():
        kind = SLOTS[slot][0]
        for env in value if slot in LIST_SLOTS else [value]:
            name = env if isinstance(env, str) else env["name"]
            try:
                registry.resolve(kind, name)
            except ResolutionError as exc:
                missing.append(f"{slot}: {exc}")
    return missing


def stack_envelopes(registry: Registry, stack: Component, *, small: bool = False) -> dict[str, Any]:
    """Slot -> envelope for ``stack``, slots it leaves out taken from the stacks it extends; ``small`` lays its
    CPU-sized envelopes over the result."""
    chain: list[Component] = []
    comp: Component | None = stack
    while comp is not None:
        if any(c.qid == comp.qid for c in chain):
            loop = " -> ".join(c.qid for c in (*chain, comp))
            raise ResolutionError(f"stack '{stack.qid}' extends itself ({loop}); fix the plugin's 'extends'")
        chain.append(comp)
        parent = comp.spec.extends  # type: ignore[attr-defined]
        try:
            comp = registry.resolve("stack", parent) if parent else None
        except ResolutionError as exc:
            raise ResolutionError(f"stack '{chain[-1].qid}' extends '{parent}': {exc}") from exc
    out: dict[str, Any] = {}
    for comp in reversed(chain):
        own = dict(comp.spec.components)  # type: ignore[attr-defined]
        if "callbacks" in own and "callbacks" in out:  # added to the extended stack's, as a config's are
            own["callbacks"] = add_callbacks(list(out["callbacks"]), list(own["callbacks"]), registry)
        out.update(own)
    if small:
        for comp in reversed(chain):
            out.update(comp.spec.small)  # type: ignore[attr-defined]
    return out


def add_callbacks(base: list[Any], added: list[Any], registry: Registry, problems: list[Problem] | None = None) -> list[Any]:
    """The stack's callbacks with the config's: an id already there gets the config's params in place, a new one
    is appended, ``-id`` removes one. Unknown names pass through to be reported with their path."""
    def qid(item: Any) -> str | None:
        name = item if isinstance(item, str) else item.get("name") if isinstance(item, dict) else None
        try:
            return registry.resolve("callback", name.lstrip("-")).qid if isinstance(name, str) else None
        except ResolutionError:
            return None

    out = list(base)
    for i, item in enumerate(added):
        if isinstance(item, str) and item.startswith("-"):
            target = qid(item)
            kept = [e for e in out if qid(e) != target or target is None]
            if (target is None or len(kept) == len(out)) and problems is not None:
                listed = ", ".join(filter(None, map(qid, out))) or "none"
                problems.append(Problem(f"callbacks[{i}]", f"{item!r} removes nothing: the callbacks are {listed}"))
            out = kept
            continue
        target = qid(item)
        at = next((j for j, e in enumerate(out) if target is not None and qid(e) == target), None)
        if at is None:
            out.append(item)
        else:
            out[at] = item
    return out

"""Phase B of config validation: each slot's envelope, from the config or else its stack, resolved to a
qualified id with its params validated against the component's model and the run context."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from biom3d.core.config import Config, Envelope
from biom3d.core.context import RunContext
from biom3d.core.errors import Problem
from biom3d.core.specs import SLOTS
from biom3d.core.stacks import add_callbacks
from biom3d.core.upgrades import ENVELOPE_LISTS
from biom3d.core.validation_errors import problems_from

#: slots every run needs: when neither the config nor its stack fills one, validation says so
REQUIRED_SLOTS = ("preprocessor", "dataset", "model", "loss", "trainer", "predictor")


def resolve_envelopes(raw: dict[str, Any], registry: Any, cfg: Config | None, problems: list[Problem]) -> dict[str, Any]:
    """Every slot's envelope, from the config or its stack, resolved to qualified ids with params validated;
    problems are appended with their paths."""
    ctx = RunContext.from_config(cfg) if cfg is not None else None
    stack, from_stack = _stack_envelopes(raw, registry, problems)
    stack_failed = any(p.path == "stack" for p in problems)
    resolved: dict[str, Any] = {"stack": stack}
    for slot, (kind, role) in SLOTS.items():
        value, origin = (raw[slot], "") if slot in raw else (from_stack.get(slot), f" (from stack '{stack}')")
        many = slot in ENVELOPE_LISTS
        if slot == "callbacks" and slot in raw and isinstance(value, list) and not raw.get("callbacks_replace"):
            value = add_callbacks(list(from_stack.get(slot) or []), value, registry, problems)
        if value is None:
            if slot in REQUIRED_SLOTS and not stack_failed:
                problems.append(Problem(slot, _missing(slot, kind, stack, registry)))
            resolved[slot] = [] if many else None
            continue
        if many and not isinstance(value, list | tuple):
            continue  # phase A reported it
        out = []
        for i, item in enumerate(value if many else [value]):
            path = f"{slot}[{i}]" if many else slot
            try:
                env = item if isinstance(item, Envelope) else Envelope.model_validate(item)
            except ValidationError:
                continue  # phase A reported it
            if env.name is None:  # `model.params.x: 1` alone tweaks the stack's model
                base = None if many else from_stack.get(slot)
                if base is None:
                    problems.append(Problem(f"{path}.name", "required" + ("" if many else f": stack '{stack}' "
                                                                          f"has no {slot} whose params to change")))
                    continue
                base = Envelope.model_validate(base)
                env = Envelope(name=base.name, params={**base.params, **env.params})
                origin = f" ({base.name}, the {slot} of stack '{stack}', with this config's params)"
            resolved_env = _resolve_one(env, kind, role, path, origin, registry, ctx, problems)
            if resolved_env is not None:
                out.append(resolved_env)
        resolved[slot] = out if many else (out[0] if out else None)
    resolved["callbacks_replace"] = True  # resolved: the list is complete
    if cfg is not None and cfg.train.checkpoints and not stack_failed and not any(p.path.startswith("callbacks")
                                                                                    for p in problems):
        writers = [e.name for e in resolved["callbacks"] if registry.resolve("callback", e.name).spec.writes_checkpoints]
        if not writers:
            problems.append(Problem("callbacks", "no callback writes checkpoints, which predict and --resume need; "
                                    "keep core/checkpoint (do not remove it with '-checkpoint'), or set "
                                    "train.checkpoints: false to train without"))
    return resolved


def _stack_envelopes(raw: dict[str, Any], registry: Any, problems: list[Problem]) -> tuple[str | None, dict[str, Any]]:
    """The chosen stack's qualified id and its envelopes."""
    from biom3d.core.registry import ResolutionError
    from biom3d.core.stacks import choose_stack, stack_envelopes

    name = raw.get("stack")
    try:
        stack = choose_stack(registry, name if isinstance(name, str) else None)
        return (stack.qid, stack_envelopes(registry, stack)) if stack is not None else (None, {})
    except ResolutionError as exc:
        if all(slot in raw for slot in SLOTS):  # a resolved config (a run's) needs no stack any more
            return name, {}
        problems.append(Problem("stack", str(exc)))
        return None, {}


def _resolve_one(env: Envelope, kind: str, role: str | None, path: str, origin: str, registry: Any, ctx: Any,
                 problems: list[Problem]) -> Envelope | None:
    from biom3d.core.registry import ResolutionError

    try:
        comp = registry.resolve(kind, env.name)
    except ResolutionError as exc:
        problems.append(Problem(f"{path}.name", f"{exc}{origin}"))
        return None
    if role and role not in comp.spec.roles:
        problems.append(Problem(f"{path}.name", f"'{comp.qid}' cannot be used as a {role} "
                                f"(roles: {', '.join(sorted(comp.spec.roles))}){origin}"))
        return None
    try:
        params = comp.validate_params(env.params, ctx)
    except ValidationError as exc:
        problems.extend(Problem(p.path, p.message + origin) for p in problems_from(exc, prefix=f"{path}.params", model=comp.spec.params))
        return None
    return Envelope(name=comp.qid, params=params.model_dump(mode="json"))


def _missing(slot: str, kind: str, stack: str | None, registry: Any) -> str:
    offered = [c.qid for c in registry.components(kind)][:5]
    where = f"stack '{stack}' provides none" if stack is not None else "no installed plugin declares a stack"
    choices = f"installed {kind}s: {', '.join(offered)}" if offered else f"no installed plugin offers a {kind}"
    return (f"not set, and {where} ({choices}); set {slot}: {{name: ...}}, choose another stack with `stack:` "
            "(`biom3d plugins --kind stack` lists them) or install a plugin that offers one")

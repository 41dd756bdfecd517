"""JSON Schema of the config, built from the installed plugins: each envelope slot becomes a union
discriminated on ``name``, so an editor can complete component names and their params."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import ConfigDict, Field, create_model

from biom3d.core.config import SLOTS, Config
from biom3d.core.upgrades import ENVELOPE_LISTS


def config_schema(registry: Any = None) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a config for the plugins in ``registry``."""
    if registry is None:
        from biom3d.core.discovery import get_registry

        registry = get_registry()
    overrides: dict[str, Any] = {}
    for slot, (kind, role) in SLOTS.items():
        comps = [c for c in registry.components(kind) if role is None or role in c.spec.roles]
        slot_type = _slot_type(kind, comps, registry, removable=slot == "callbacks")
        description = Config.model_fields[slot].description
        many = list[slot_type] if slot in ENVELOPE_LISTS else slot_type  # type: ignore[valid-type]
        overrides[slot] = (many | None, Field(None, description=description))  # null: the stack's
    stacks = sorted({n for c in registry.components("stack") for n in (c.qid, *c.spec.names)})
    if stacks:
        overrides["stack"] = (Literal[tuple(stacks)] | None, Field(None, description=Config.model_fields["stack"].description))
    model = create_model("Biom3dConfig", __base__=Config, **overrides)
    schema = model.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "biom3d config"
    return schema


def _slot_type(kind: str, comps: list, registry: Any, *, removable: bool = False) -> Any:
    """A component's name, a ``{name, params}`` envelope of one, ``{params}`` (the stack's component, whose
    params are checked once the stack is known) or, where ``removable``, ``-name`` (take the stack's out)."""
    if not comps:
        return dict[str, Any]
    names_taken = _unambiguous_names(kind, registry)
    variants = []
    for comp in comps:
        names = (comp.qid, *[n for n in comp.spec.names if n in names_taken])
        params = comp.spec.params
        required = any(f.is_required() for f in params.model_fields.values())
        params_field = Field(...) if required else Field(default_factory=params)
        variants.append(
            create_model(
                f"{kind}__{comp.qid.replace('/', '__').replace('-', '_').replace('.', '_')}",
                __config__=ConfigDict(extra="forbid", title=comp.qid),
                __doc__=comp.spec.summary or None,
                name=(Literal[names], Field(..., description=comp.spec.summary)),  # type: ignore[valid-type]
                params=(params, params_field),
            )
        )
    all_names = tuple(n for comp in comps for n in (comp.qid, *comp.spec.names) if n == comp.qid or n in names_taken)
    union: Any = variants[0] if len(variants) == 1 else Annotated[Union[tuple(variants)], Field(discriminator="name")]  # noqa: UP007
    nameless = create_model(f"{kind}__of_the_stack", __config__=ConfigDict(extra="forbid", title="the stack's"),
                            params=(dict[str, Any], Field(default_factory=dict, description="Params on top of the "
                                                          "stack's component's.")))
    shorthands: tuple[str, ...] = all_names + (tuple(f"-{n}" for n in all_names) if removable else ())
    return Union[Literal[shorthands], union, nameless]  # type: ignore[valid-type]  # noqa: UP007 (bare string shorthand)


def _unambiguous_names(kind: str, registry: Any) -> set[str]:
    counts: dict[str, set[str]] = {}
    for comp in registry.components(kind):
        for n in comp.spec.names:
            counts.setdefault(n, set()).add(comp.plugin.name)
    return {n for n, owners in counts.items() if len(owners) == 1}



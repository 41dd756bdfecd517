"""Spec records: what a plugin announces about one component. Frozen, light, validated on creation.

A spec never imports its implementation: ``target`` is a ``"pkg.module:attr"`` string resolved only when a
selected component is built (or a callable, for tests and small plugins).
"""

from __future__ import annotations

import difflib
import importlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from biom3d.core.errors import SpecError

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")
TARGET_RE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
ROLES = frozenset({"metric", "loss"})


class Params(BaseModel):
    """Base for params models: unknown keys are errors, and the validation schema is built on first use
    rather than at import, which keeps `biom3d plugins` fast however many plugins are installed."""

    model_config = ConfigDict(extra="forbid", defer_build=True)


def param_defaults(params_model: type[BaseModel]) -> dict[str, Any]:
    """A params model's defaults as JSON values; {} when some param has none (there is nothing to fill in)."""
    try:
        return params_model().model_dump(mode="json")
    except (TypeError, ValueError):
        return {}


class NoParams(Params):
    """Params model of a component that takes none."""


@dataclass(frozen=True, kw_only=True)
class NamedSpec:
    """What every record has: a checked name, aliases and a summary. Subclasses set ``kind``."""

    kind: ClassVar[str] = ""

    name: str
    summary: str = ""
    aliases: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not NAME_RE.match(self.name):
            raise SpecError(f"{self.kind} name {self.name!r} must match {NAME_RE.pattern}")
        if isinstance(self.aliases, str) or not all(isinstance(a, str) and a for a in self.aliases):
            raise SpecError(f"{self.kind} {self.name!r}: aliases must be a tuple of non-empty strings")
        object.__setattr__(self, "aliases", tuple(self.aliases))
        if not isinstance(self.summary, str):
            raise SpecError(f"{self.kind} {self.name!r}: summary must be a string")

    @property
    def names(self) -> tuple[str, ...]:
        """The short name and every alias."""
        return (self.name, *self.aliases)


@dataclass(frozen=True, kw_only=True)
class ComponentSpec(NamedSpec):
    """A buildable component: ``target`` is its factory ``factory(params, ctx)``."""

    target: str | Callable[..., Any]
    params: type[BaseModel] = NoParams
    params_version: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.target, str):
            if not TARGET_RE.match(self.target):
                raise SpecError(f"{self.kind} {self.name!r}: target {self.target!r} is not 'pkg.module:attr'")
        elif not callable(self.target):
            raise SpecError(f"{self.kind} {self.name!r}: target must be a 'pkg.module:attr' string or a callable")
        if not (isinstance(self.params, type) and issubclass(self.params, BaseModel)):
            raise SpecError(f"{self.kind} {self.name!r}: params must be a pydantic model class")
        if self.params.model_config.get("extra") != "forbid":
            raise SpecError(
                f"{self.kind} {self.name!r}: params model {self.params.__name__} must set extra='forbid' "
                "so that misspelt keys are reported"
            )

    def load(self) -> Callable[..., Any]:
        """Import and return the target. Heavy imports happen here, never at discovery."""
        if callable(self.target):
            return self.target
        module_name, _, attr = self.target.partition(":")
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
        return obj


@dataclass(frozen=True, kw_only=True)
class PreprocessorSpec(ComponentSpec):
    kind: ClassVar[str] = "preprocessor"


@dataclass(frozen=True, kw_only=True)
class DatasetSpec(ComponentSpec):
    kind: ClassVar[str] = "dataset"


@dataclass(frozen=True, kw_only=True)
class ModelSpec(ComponentSpec):
    kind: ClassVar[str] = "model"


@dataclass(frozen=True, kw_only=True)
class MetricSpec(ComponentSpec):
    """A metric, a loss, or both. Losses are minimised; ``higher_is_better`` orients metrics for 'best'."""

    kind: ClassVar[str] = "metric"
    roles: frozenset[str] = frozenset({"metric"})
    higher_is_better: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        roles = frozenset(self.roles)
        if not roles or not roles <= ROLES:
            raise SpecError(f"metric {self.name!r}: roles {sorted(roles)} must be a non-empty subset of {sorted(ROLES)}")
        object.__setattr__(self, "roles", roles)


@dataclass(frozen=True, kw_only=True)
class TrainerSpec(ComponentSpec):
    kind: ClassVar[str] = "trainer"


@dataclass(frozen=True, kw_only=True)
class PredictorSpec(ComponentSpec):
    kind: ClassVar[str] = "predictor"


@dataclass(frozen=True, kw_only=True)
class PostprocessorSpec(ComponentSpec):
    kind: ClassVar[str] = "postprocessor"


@dataclass(frozen=True, kw_only=True)
class CallbackSpec(ComponentSpec):
    """``writes_checkpoints``: this callback writes ``checkpoints/*.pt``, which predict and resume need; a config
    whose callbacks include none is refused unless it sets ``train.checkpoints: false``."""

    kind: ClassVar[str] = "callback"
    writes_checkpoints: bool = False


@dataclass(frozen=True, kw_only=True)
class _FileSpec(ComponentSpec):
    """Readers and writers: picked by suffix (longest first, then priority), or for directories."""

    suffixes: tuple[str, ...] = ()
    priority: int = 0
    directory: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.suffixes, str):
            raise SpecError(f"{self.kind} {self.name!r}: suffixes must be a tuple, not a string")
        suffixes = tuple(s.lower() for s in self.suffixes)
        if not suffixes and not self.directory:
            raise SpecError(f"{self.kind} {self.name!r}: give suffixes (e.g. '.nii.gz') or directory=True")
        bad = [s for s in suffixes if not s.startswith(".") or len(s) < 2]
        if bad:
            raise SpecError(f"{self.kind} {self.name!r}: suffixes {bad} must start with '.'")
        if not isinstance(self.priority, int):
            raise SpecError(f"{self.kind} {self.name!r}: priority must be an int")
        object.__setattr__(self, "suffixes", suffixes)

    def matches(self, filename: str) -> str | None:
        """The longest of our suffixes that ``filename`` ends with, if any."""
        low = filename.lower()
        hits = [s for s in self.suffixes if low.endswith(s)]
        return max(hits, key=len) if hits else None


@dataclass(frozen=True, kw_only=True)
class ReaderSpec(_FileSpec):
    kind: ClassVar[str] = "reader"


@dataclass(frozen=True, kw_only=True)
class WriterSpec(_FileSpec):
    kind: ClassVar[str] = "writer"


@dataclass(frozen=True, kw_only=True)
class StackSpec(NamedSpec):
    """A named set of components that work together: the envelope per config slot that a config leaving the
    slot out gets. ``extends`` names the stack (qualified id) whose envelopes fill the slots this one leaves out,
    e.g. ``core/base`` for core's preprocessor, trainer, predictor, post-processing and callbacks. With no
    ``stack:`` in a config, the installed stack of highest ``priority`` is used. ``small`` holds envelopes that
    replace the stack's for a CPU-sized run (`biom3d demo`, smoke tests): a smaller network, say.

    Envelopes are ``{"name": id, "params": {...}}`` or a bare id; list slots (metrics, postprocessors,
    callbacks) take a list of them; the slots are :data:`SLOTS`.
    """

    kind: ClassVar[str] = "stack"

    components: Mapping[str, Any] = field(default_factory=dict)
    extends: str | None = None
    priority: int = 0
    small: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.priority, int) or isinstance(self.priority, bool):
            raise SpecError(f"stack {self.name!r}: priority must be an int")
        if self.extends is not None and (not isinstance(self.extends, str) or "/" not in self.extends):
            raise SpecError(f"stack {self.name!r}: extends must be a qualified stack id such as 'core/base'")
        for what in ("components", "small"):
            table = getattr(self, what)
            if not isinstance(table, Mapping):
                raise SpecError(f"stack {self.name!r}: {what} must be a mapping of slot -> envelope")
            for slot, value in table.items():
                problem = _envelope_problem(slot, value)
                if problem:
                    raise SpecError(f"stack {self.name!r}: {what}[{slot!r}] {problem}")
            object.__setattr__(self, what, MappingProxyType(dict(table)))


def _envelope_problem(slot: str, value: Any) -> str | None:
    if slot not in SLOTS:
        close = difflib.get_close_matches(str(slot), list(SLOTS), n=1)
        return "is not a config slot" + (f"; did you mean {close[0]!r}?" if close else "")
    items = value if slot in LIST_SLOTS else [value]
    if slot in LIST_SLOTS and not isinstance(value, list | tuple):
        return "must be a list of envelopes"
    for item in items:
        if isinstance(item, str) and item:
            continue
        if not (isinstance(item, Mapping) and isinstance(item.get("name"), str) and item["name"]
                and set(item) <= {"name", "params"} and isinstance(item.get("params", {}), Mapping)):
            return f"holds {item!r}: an envelope is an id or {{'name': id, 'params': {{...}}}}"
    return None


@dataclass(frozen=True)
class Kind:
    """A component kind: its hook and its spec class."""

    name: str
    hook: str
    spec: type[NamedSpec]
    plural: str = field(default="")


KINDS: dict[str, Kind] = {
    k.name: k
    for k in (
        Kind("preprocessor", "biom3d_preprocessors", PreprocessorSpec, "preprocessors"),
        Kind("dataset", "biom3d_datasets", DatasetSpec, "datasets"),
        Kind("model", "biom3d_models", ModelSpec, "models"),
        Kind("metric", "biom3d_metrics", MetricSpec, "metrics"),
        Kind("trainer", "biom3d_trainers", TrainerSpec, "trainers"),
        Kind("predictor", "biom3d_predictors", PredictorSpec, "predictors"),
        Kind("postprocessor", "biom3d_postprocessors", PostprocessorSpec, "postprocessors"),
        Kind("callback", "biom3d_callbacks", CallbackSpec, "callbacks"),
        Kind("reader", "biom3d_readers", ReaderSpec, "readers"),
        Kind("writer", "biom3d_writers", WriterSpec, "writers"),
        Kind("stack", "biom3d_stacks", StackSpec, "stacks"),
    )
}


#: config slot -> (kind of component it takes, role a metric-kind component must have)
SLOTS: dict[str, tuple[str, str | None]] = {
    "preprocessor": ("preprocessor", None),
    "dataset": ("dataset", None),
    "model": ("model", None),
    "loss": ("metric", "loss"),
    "metrics": ("metric", "metric"),
    "trainer": ("trainer", None),
    "predictor": ("predictor", None),
    "postprocessors": ("postprocessor", None),
    "callbacks": ("callback", None),
    "reader": ("reader", None),
    "writer": ("writer", None),
}
#: the slots that hold a list of envelopes
LIST_SLOTS = ("metrics", "postprocessors", "callbacks")

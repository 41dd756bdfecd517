"""Run configs: YAML read with ``safe_load``, validated in two phases, resolved to qualified ids.

Phase A checks structure with plain pydantic models and needs no plugin. Phase B resolves each
``{name, params}`` envelope through the registry and validates its params against the component's model,
with the run context available to validators. Every problem of both phases is reported at once, each with
its path (``model.params.num_pools[2]``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from biom3d.core.errors import ConfigError, Problem
from biom3d.core.specs import SLOTS
from biom3d.core.upgrades import CURRENT_SCHEMA_VERSION, ENVELOPE_LISTS, ENVELOPE_SLOTS, upgrade
from biom3d.core.validation_errors import problems_from

Triple = tuple[int, int, int]


class Envelope(BaseModel):
    """A module choice: the component's name (qualified id, short name or alias) and its params."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, min_length=1, description="Qualified id (plugin/name), short name or alias; "
                             "omitted: the stack's component, with these params on top of the stack's.")
    params: dict[str, Any] = Field(default_factory=dict, description="The component's own parameters.")

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value

    @field_validator("params", mode="before")
    @classmethod
    def _none_is_empty(cls, value: Any) -> Any:
        return {} if value is None else value


class DataConfig(BaseModel):
    """Where the data lives. Relative paths are relative to the config file."""

    model_config = ConfigDict(extra="forbid")

    images: str | None = Field(None, description="Folder of raw training images.")
    masks: str | None = Field(None, description="Folder of raw training masks, paired with images by name.")
    preprocessed: str | None = Field(None, description="Folder written by `biom3d preprocess`.")
    folds: str | None = Field(None, description="folds.csv (default: <preprocessed>/folds.csv).")
    fingerprint: str | None = Field(None, description="fingerprint.json (default: <preprocessed>/fingerprint.json).")
    test_images: str | None = Field(None, description="Folder of images to predict after training (`biom3d run`).")
    test_masks: str | None = Field(None, description="Ground truth for test_images, to evaluate predictions.")
    predictions: str | None = Field(None, description="Where `biom3d run` writes predictions (default: <pipeline folder>/predictions).")
    probabilities: str | None = Field(None, description="Where `biom3d run` also saves the test images' probabilities "
                                      "before post-processing (float16 .npz, as `biom3d predict --probabilities`); "
                                      "none when unset.")


class TrainConfig(BaseModel):
    """Stand-alone training hyper-parameters: `biom3d train` and `run` have a flag for the common ones and
    ``--set train.KEY=VALUE`` for any."""

    model_config = ConfigDict(extra="forbid")

    epochs: int = Field(1000, ge=1, description="Number of epochs.")
    iters_per_epoch: int = Field(250, ge=1, description="Training batches per epoch.")
    val_iters: int = Field(50, ge=0, description="Validation batches per validation round (0: no validation).")
    val_every: int = Field(1, ge=1, description="Validate every N epochs.")
    batch_size: int = Field(2, ge=1, description="Patches per batch.")
    lr: float = Field(1e-2, gt=0, description="Initial learning rate.")
    optimizer: Literal["sgd", "adam", "adamw"] = Field("sgd", description="Optimizer.")
    momentum: float = Field(0.99, ge=0, lt=1, description="SGD momentum.")
    nesterov: bool = Field(True, description="Nesterov momentum (SGD).")
    weight_decay: float = Field(3e-5, ge=0, description="Weight decay.")
    scheduler: Literal["cosine", "poly", "constant"] = Field(
        "poly", description="Learning-rate schedule: poly, lr x (1 - epoch/epochs)^0.9 (the original biom3d's and "
        "nnU-Net's), cosine or constant.")
    grad_clip: float | None = Field(12.0, gt=0, description="Clip the gradient norm to this value (null: off).")
    fold: int = Field(0, ge=0, description="Validation fold from folds.csv.")
    workers: int = Field(2, ge=0, description="Data-loader worker processes.")
    fp16: bool = Field(True, description="Mixed precision (CUDA only; ignored on CPU).")
    device: str = Field("auto", description="'auto', 'cpu', 'cuda', 'cuda:1', 'mps'.")
    seed: int | None = Field(42, description="Random seed (null: not seeded).")
    checkpoints: bool = Field(True, description="Refuse callbacks that write no checkpoint (false: train without; "
                              "the run can then be neither predicted nor resumed).")
    compile: bool = Field(False, description="Train the network through torch.compile where this platform compiles "
                          "it (a warning, then eager training, where it cannot); the first steps pay the compile "
                          "time (benchmarks/bench_train_step.py --compile measures both).")
    ddp_timeout: float = Field(1800.0, gt=0, description="Under torchrun (DDP): seconds a rank waits in a collective "
                               "(gradient sync, metrics, checkpoint barrier) before failing, so that a dead or hung "
                               "rank ends the job with an error instead of hanging it.")

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        head = value.split(":")[0]
        if head not in {"auto", "cpu", "cuda", "mps"}:
            raise ValueError("must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'")
        return value


class AutoConfigSettings(BaseModel):
    """Budget of auto-configuration (used by `biom3d preprocess` and `biom3d run`)."""

    model_config = ConfigDict(extra="forbid")

    max_dim: int = Field(128, ge=8, le=1024, description="Side of the largest cubic patch; its volume is the budget.")
    max_pool: int = Field(5, ge=0, le=10, description="Most poolings per axis.")
    max_batch: int | None = Field(
        None, ge=2, le=1024,
        description="An extra cap on the batch size; null: the paper's rule alone (images // 20, at least 2).",
    )


class Config(BaseModel):
    """A biom3d run config."""

    model_config = ConfigDict(extra="forbid")

    schema_version: int = Field(CURRENT_SCHEMA_VERSION, description="Config format version.")
    name: str = Field("biom3d", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="Run name (run folder prefix).")
    runs_dir: str = Field("runs", description="Folder that holds run folders (relative to the working directory).")
    stages: list[Literal["preprocess", "train", "predict", "eval"]] = Field(
        default_factory=lambda: ["preprocess", "train", "predict", "eval"],
        description="Stages `biom3d run` executes (those without data are skipped).",
    )
    cross_validation: bool = Field(
        False, description="`biom3d run` trains one run per fold of folds.csv (folds/fold-K/, validating on fold K), "
        "predicts each fold's held-out training images with that fold's run and scores them against their masks "
        "(cv/eval.csv: the cross-validation Dice), and predicts the test images with the ensemble of all folds.")

    # values shared by several modules, written once (the run context)
    num_classes: int = Field(1, ge=1, description="Number of foreground classes.")
    in_channels: int = Field(1, ge=1, description="Image channels.")
    multilabel: bool = Field(False, description="Masks are 4D multi-label (sigmoid outputs) instead of label maps.")
    patch_size: Triple | None = Field(None, description="Training patch size (D, H, W).")
    aug_patch_size: Triple | None = Field(None, description="Enlarged patch cropped before rotation.")
    num_pools: Triple | None = Field(None, description="Poolings per axis.")
    spacing: tuple[float, float, float] | None = Field(None, description="Target voxel spacing (median).")

    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    autoconfig: AutoConfigSettings = Field(default_factory=AutoConfigSettings)

    # component slots: null means "the stack's" (phase B fills every slot and records the stack it used)
    stack: str | None = Field(None, description="Stack (plugin/name) filling the slots this config leaves out "
                              "(null: the installed stack of highest priority; `biom3d plugins --kind stack`).")
    preprocessor: Envelope | None = Field(None, description="Turns raw images and masks into training arrays.")
    dataset: Envelope | None = Field(None, description="Samples (and augments) training patches.")
    model: Envelope | None = Field(None, description="The network.")
    loss: Envelope | None = Field(None, description="The training loss (a metric-kind component with the loss role).")
    metrics: list[Envelope] | None = Field(None, description="Validation metrics; the first one selects best.pt.")
    trainer: Envelope | None = Field(None, description="The training loop.")
    predictor: Envelope | None = Field(None, description="Whole-volume inference (tiling, blending, TTA).")
    postprocessors: list[Envelope] | None = Field(None, description="Chained: probabilities -> mask -> cleaned mask.")
    callbacks: list[Envelope] | None = Field(None, description="Run at train/epoch/batch begin and end. Entries are "
                                             "added to the stack's (same id: its params change; '-id' removes one).")
    callbacks_replace: bool = Field(False, description="The callbacks list is the whole list, not additions to the "
                                    "stack's (resolved configs are written so).")
    reader: Envelope | None = Field(None, description="Force one reader instead of choosing by suffix.")
    writer: Envelope | None = Field(None, description="Force one writer instead of the input's format.")

    _source: Path | None = PrivateAttr(None)

    @property
    def source_dir(self) -> Path | None:
        """Folder of the file this config came from: relative data paths start there."""
        return self._source.parent if self._source is not None else None

    def path(self, value: str | None) -> Path | None:
        """A data path from this config, made absolute against the config's folder."""
        if value is None:
            return None
        p = Path(value).expanduser()
        if not p.is_absolute() and self.source_dir is not None:
            p = self.source_dir / p
        return p

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False, default_flow_style=None)


assert set(SLOTS) == set(ENVELOPE_SLOTS) | set(ENVELOPE_LISTS)


# -- public entry points ------------------------------------------------------------------------------------
def load_config(path: str | Path, *, registry: Any = None, overrides: dict[str, Any] | None = None) -> Config:
    """Read, upgrade, validate and resolve a YAML config file. Raises ConfigError with every problem."""
    path = Path(path)
    raw = read_yaml(path)
    if overrides:
        raw = apply_overrides(raw, overrides)
    try:
        cfg = validate(raw, registry=registry, source=str(path))
    except ConfigError as exc:
        raise from_command_line(exc, overrides or {}) from None
    cfg._source = path.resolve()
    return cfg


def from_command_line(exc: ConfigError, overrides: dict[str, Any]) -> ConfigError:
    """``exc`` with each problem that lies under a key set on the command line (``--set``, ``--epochs``...) saying
    so: the file named in the error does not hold that value, and the user should not search it there."""
    given = [k for k, v in overrides.items() if v is not None]

    def from_flag(path: str) -> bool:
        return any(path == k or path.startswith((k + ".", k + "[")) for k in given)

    problems = [Problem(p.path, p.message + " (set on the command line)") if from_flag(p.path) else p
                for p in exc.problems]
    return ConfigError(problems, source=exc.source)


def read_yaml(path: Path) -> dict[str, Any]:
    """``yaml.safe_load`` a mapping, with errors that name the file (and line); documents beyond the
    :func:`check_yaml_limits` are refused before they are built."""
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist", source=str(path))
    try:
        raw = yaml.safe_load(read_yaml_text(path))
    except yaml.YAMLError as exc:
        raise ConfigError(f"not valid YAML: {exc}", source=str(path)) from exc
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"the top level must be a mapping, got {type(raw).__name__}", source=str(path))
    return raw


#: far above any real config (a resolved one has a few hundred nodes, depth under 10), far below harm
MAX_YAML_BYTES = 4 * 2**20
MAX_YAML_DEPTH = 64
MAX_YAML_NODES = 100_000


def read_yaml_text(path: Path) -> str:
    """The text of a YAML file, refused (ConfigError naming the file) when it is too big, not UTF-8, or
    would build a document beyond the limits; every YAML entry point reads through here."""
    path = Path(path)
    size = path.stat().st_size
    if size > MAX_YAML_BYTES:
        raise ConfigError(f"the file is {size} bytes; a config is at most {MAX_YAML_BYTES} bytes", source=str(path))
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"not a UTF-8 text file ({exc.reason} at byte {exc.start})", source=str(path)) from exc
    check_yaml_limits(text, source=str(path))
    return text


def check_yaml_limits(text: str, *, source: str | None = None) -> None:
    """Refuse a document nested deeper than MAX_YAML_DEPTH or that expands (aliases included) to more than
    MAX_YAML_NODES values, before anything is built. Walks the parser's events, which needs no recursion,
    so a 100k-deep document or a billion-laughs alias bomb costs what its text costs."""
    anchors: dict[str, tuple[int, int]] = {}  # anchor -> (values it expands to, levels it nests)
    stack: list[list[Any]] = []  # open collections: [values so far, levels of the deepest child, anchor]
    done = 0  # values of closed top-level nodes

    def check(levels: int, line: int) -> None:
        if len(stack) + levels > MAX_YAML_DEPTH:
            raise ConfigError(f"line {line}: nested more than {MAX_YAML_DEPTH} levels deep; a config is far "
                              "flatter, so it is not read", source=source)
        if done + sum(frame[0] for frame in stack) > MAX_YAML_NODES:
            raise ConfigError(f"line {line}: the document expands to more than {MAX_YAML_NODES} values (aliases "
                              "included); a config is far smaller, so it is not read", source=source)

    def add(values: int, levels: int, line: int) -> None:
        nonlocal done
        if stack:
            stack[-1][0] += values
            stack[-1][1] = max(stack[-1][1], levels)
        else:
            done += values
        check(levels, line)

    try:
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            line = event.start_mark.line + 1 if event.start_mark else 0
            if isinstance(event, yaml.CollectionStartEvent):
                stack.append([1, 0, event.anchor])
                check(0, line)
            elif isinstance(event, yaml.CollectionEndEvent):
                values, levels, anchor = stack.pop()
                if anchor:
                    anchors[anchor] = (values, levels)
                add(values, levels + 1, line)
            elif isinstance(event, yaml.ScalarEvent):
                if event.anchor:
                    anchors[event.anchor] = (1, 0)
                add(1, 0, line)
            elif isinstance(event, yaml.AliasEvent):
                add(*anchors.get(event.anchor, (1, 0)), line)
    except yaml.YAMLError:
        return  # not valid YAML: the loader reports it, with its line


def safe_name(text: str) -> str:
    """A run name (Config.name's pattern) made from a folder's name: other characters become '-', and one that
    does not start with a letter or digit gets a 'run-' prefix (``_imgs`` -> ``run-_imgs``)."""
    import re

    cleaned = re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-.") or "biom3d"
    return cleaned if cleaned[0].isalnum() else "run-" + cleaned


# override values that remove their key, so the params model's default applies again, or set it to null
# (None itself means "not given": a command's flags that were not given are None)
RESET, NULL = object(), object()


def apply_overrides(raw: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Set dotted keys (``train.epochs``) on a copy of ``raw``; None values are skipped, RESET ones removed,
    NULL ones set to None."""
    import copy

    raw = copy.deepcopy(raw)
    for dotted, value in overrides.items():
        if value is None:
            continue
        node = raw
        *parents, leaf = dotted.split(".")
        for i, key in enumerate(parents):
            if isinstance(node.get(key), str):
                node[key] = {"name": node[key]}  # a shorthand envelope (model: unet3d) given params
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                where = ".".join(parents[: i + 1])
                raise ConfigError([Problem(where, f"is {node!r}, not a section: {dotted} cannot be set in it")])
        if value is RESET:
            node.pop(leaf, None)
        else:
            node[leaf] = None if value is NULL else value
    return raw


def validate(raw: dict[str, Any], *, registry: Any = None, source: str | None = None, resolve: bool = True) -> Config:
    """Both phases; the returned Config has qualified ids and every param default filled in."""
    raw = upgrade(raw, source=source)
    problems: list[Problem] = []
    cfg: Config | None = None
    try:
        cfg = Config.model_validate(raw)
    except ValidationError as exc:
        problems += problems_from(exc, model=Config)
    if resolve:
        if registry is None:
            from biom3d.core.discovery import get_registry

            registry = get_registry()
        from biom3d.core.resolution import resolve_envelopes  # phase B needs the registry and the stacks

        resolved = resolve_envelopes(raw, registry, cfg, problems)
    if problems:
        raise ConfigError(problems, source=source)
    assert cfg is not None
    if resolve:
        cfg = cfg.model_copy(update=resolved)
    return cfg

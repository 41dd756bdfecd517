"""Options several commands share, each defined once so that `biom3d train` and `biom3d run` (and the
auto-configuration flags of `autoconfig`, `preprocess` and `run`) cannot drift apart. Typer and the stdlib
only: `biom3d --help` must stay light.

Each alias is an ``Annotated`` type whose default (``None``: not given, the config's value stands) the
command writes; :data:`TRAIN_KEYS` and :data:`AUTOCONFIG_KEYS` map the parameters to config keys, and
:func:`overrides` turns a command's arguments into config overrides with that one mapping.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import typer

# -- training: every one is a config override, the same on `train` and `run` --------------------------------
Epochs = Annotated[int | None, typer.Option(help="train.epochs (with --resume: extend the run).", min=1)]
ItersPerEpoch = Annotated[int | None, typer.Option(help="train.iters_per_epoch.", min=1)]
BatchSize = Annotated[int | None, typer.Option(help="train.batch_size.", min=1)]
Lr = Annotated[float | None, typer.Option(help="train.lr.")]
Fold = Annotated[int | None, typer.Option(help="train.fold (validation fold of folds.csv).", min=0)]
Workers = Annotated[int | None, typer.Option(help="train.workers (data-loader processes).", min=0)]
Fp16 = Annotated[bool | None, typer.Option("--fp16/--no-fp16", help="train.fp16 (CUDA only).")]
Device = Annotated[str | None, typer.Option(help="train.device: auto, cpu, cuda, cuda:N, mps.")]
Seed = Annotated[int | None, typer.Option(help="train.seed (`biom3d run`: the fold split's seed too).")]
ValIters = Annotated[int | None, typer.Option(help="train.val_iters.", min=0)]
Compile = Annotated[bool | None, typer.Option("--compile/--no-compile", help="train.compile: torch.compile the "
                                              "network (eager, with a warning, where it cannot).")]

Set = Annotated[list[str] | None, typer.Option(
    "--set", metavar="KEY=VALUE", help="Any config key, its value read as YAML: --set train.optimizer=adam --set "
    "model.params.base_features=16 (repeat it; the flags above win over it for their own keys).")]

#: parameter name -> config key; a flag of `train` missing here would not reach the config
TRAIN_KEYS = {name: f"train.{name}" for name in ("epochs", "iters_per_epoch", "batch_size", "lr", "fold",
                                                  "workers", "fp16", "device", "seed", "val_iters", "compile")}

# -- training: where and from what ---------------------------------------------------------------------------
Resume = Annotated[Path | None, typer.Option(help="Continue this run folder from its last checkpoint; `biom3d train "
                                             "CONFIG --resume DIR` starts the run in DIR when DIR holds none yet, "
                                             "so the same command starts or continues it (torchrun --max-restarts) "
                                             "(`biom3d run`: this pipeline folder, with its config.yaml).")]
Finetune = Annotated[Path | None, typer.Option(help="Start from this run folder's trained weights.")]
RunsDir = Annotated[Path | None, typer.Option(help="Folder for run folders (`biom3d run`: for the pipeline "
                                              "folder) [default: runs_dir of the config, runs].")]
StrictVersions = Annotated[bool, typer.Option("--strict-versions", help="Refuse a run made with other plugin "
                                              "versions than the installed ones (exit 3) instead of warning.")]

# -- several GPUs: `train` and `run` start torchrun themselves (not config overrides) ------------------------
Devices = Annotated[str | None, typer.Option(help="GPUs to train on, e.g. 0,1: one process per GPU under torchrun "
                                             "(DistributedDataParallel); train.batch_size is the global batch, split "
                                             "over them, the learning rate unchanged.")]
Gpus = Annotated[int | None, typer.Option(help="Train on the first N visible GPUs (as --devices 0,..,N-1).", min=1)]

# -- auto-configuration budget: `autoconfig`, `preprocess`, `run` ---------------------------------------------
MaxDim = Annotated[int | None, typer.Option(help="Side of the largest cubic patch; its volume is the budget "
                                            "(autoconfig.max_dim) [default: 128].", min=8, max=1024)]
MaxPool = Annotated[int | None, typer.Option(help="Most poolings per axis (autoconfig.max_pool) [default: 5].",
                                             min=0, max=10)]
MaxBatch = Annotated[int | None, typer.Option(help="Cap on the batch size auto-configuration picks "
                                              "(autoconfig.max_batch) [default: the paper's rule, images // 20, "
                                              "at least 2; `biom3d autoconfig`, which has no images: 16].",
                                              min=2)]

AUTOCONFIG_KEYS = {name: f"autoconfig.{name}" for name in ("max_dim", "max_pool", "max_batch")}

# -- components and prediction ------------------------------------------------------------------------------
Stack = Annotated[str | None, typer.Option(help="Stack whose components the config uses [default: `biom3d run`: "
                                           "the config's `stack:`; else the installed one of highest priority, "
                                           "see `biom3d plugins --kind stack`].")]
Reader = Annotated[str | None, typer.Option(help="Reader id used for every file it reads (config `reader:`) "
                                            "[default: by suffix, then priority].")]
Writer = Annotated[str | None, typer.Option(help="Writer id, e.g. io/npy: masks get its format and suffix "
                                            "(config `writer:`) [default: the input's format].")]
Checkpoint = Annotated[Literal["best", "last"] | None, typer.Option(
    help="Weights to predict with: best (best validation score) or last (end of training) [default: best "
         "when the run has one, else the newest].")]

Shard = Annotated[str | None, typer.Option(help="I/N: predict part I (from 0) of N of the inputs, e.g. a SLURM "
                                           "array task: --shard $SLURM_ARRAY_TASK_ID/4 (under torchrun each rank "
                                           "predicts its share, with or without it).")]


def overrides(values: dict[str, Any], keys: dict[str, str]) -> dict[str, Any]:
    """Config overrides from a command's arguments (``locals()``): the ``keys`` given on the command line."""
    return {key: values[name] for name, key in keys.items() if values.get(name) is not None}


def set_pairs(pairs: list[str] | None) -> dict[str, Any]:
    """``--set KEY=VALUE`` pairs as overrides; the values are YAML (``safe_load``: 16, null, [1, 2], adam)."""
    import yaml

    from biom3d.core.config import NULL
    from biom3d.core.errors import InputError

    found: dict[str, Any] = {}
    for pair in pairs or ():
        key, sep, text = pair.partition("=")
        key = key.strip()
        if not sep or not key or not all(part.isidentifier() for part in key.split(".")):
            raise InputError(f"--set {pair!r}: give KEY=VALUE with a dotted config key, e.g. --set "
                             "train.optimizer=adam")
        try:
            value = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError as exc:
            raise InputError(f"--set {pair!r}: the value is not YAML ({exc.problem or exc}); quote it") from exc
        found[key] = NULL if value is None else value
    return found

"""The `biom3d` command. Top level imports typer and the stdlib only: each command imports what it needs
when it runs, so `--help` and `--version` stay under a quarter of a second."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Literal

import typer

from biom3d.cli import options as opt

app = typer.Typer(
    name="biom3d",
    help="3D biomedical image segmentation: preprocess, train, predict, evaluate, all from one command.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)
plugins_app = typer.Typer(help="List installed plugins and the components they offer.", rich_markup_mode=None)
config_app = typer.Typer(help="Validate, show, export the schema of, or import configs.", no_args_is_help=True, rich_markup_mode=None)
app.add_typer(plugins_app, name="plugins")
app.add_typer(config_app, name="config")

_state: dict = {"debug": False, "argv": sys.argv[1:]}


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        def v(dist: str) -> str:
            try:
                return version(dist)
            except PackageNotFoundError:
                return "not installed"

        typer.echo(f"biom3d-cli {v('biom3d-cli')} (biom3d-core {v('biom3d-core')}, Python {sys.version.split()[0]})")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Print versions and exit.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")] = False,
) -> None:
    _state["debug"] = debug


# -- plugins -----------------------------------------------------------------------------------------------
@plugins_app.callback(invoke_without_command=True)
def plugins(
    ctx: typer.Context,
    components: Annotated[bool, typer.Option("--components", "-c", help="List every component by kind.")] = False,
    kind: Annotated[str | None, typer.Option("--kind", "-k", help="Only components of this kind, e.g. model or stack "
                                             "(implies --components).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """List plugins (name, distribution, version, state) and, with --components, what they offer."""
    if ctx.invoked_subcommand is not None:
        return
    from biom3d.cli import plugins_cmd

    plugins_cmd.list_plugins(components=components or kind is not None, kind=kind, as_json=as_json)


@plugins_app.command("show")
def plugins_show(
    name: Annotated[str, typer.Argument(help="Plugin name, as `biom3d plugins` lists it.")],
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Show one plugin: state, reason, notes and every component it offers."""
    from biom3d.cli import plugins_cmd

    plugins_cmd.show_plugin(name, as_json=as_json)


# -- config ------------------------------------------------------------------------------------------------
@config_app.command("validate")
def config_validate(
    files: Annotated[list[Path], typer.Argument(help="Config files (YAML).")],
) -> None:
    """Check structure and every component's params; report all problems with their paths (exit 2)."""
    from biom3d.cli import config_cmd

    config_cmd.validate_files(files)


@config_app.command("show")
def config_show(file: Annotated[Path, typer.Argument(help="Config file (YAML).")]) -> None:
    """Print the resolved config: qualified ids, every default filled in."""
    from biom3d.cli import config_cmd

    config_cmd.show(file)


@config_app.command("schema")
def config_schema(
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write to this file instead of stdout.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing --output file.")] = False,
) -> None:
    """Write the JSON Schema of configs for the installed plugins (for editor completion)."""
    from biom3d.cli import config_cmd

    config_cmd.schema(output, overwrite=overwrite)


@config_app.command("import")
def config_import(
    old: Annotated[Path, typer.Argument(help="An original biom3d 0.1.x config: a run folder's log/config.yaml, or a Python "
                                          "config (config_default.py, <date>-<desc>.py), parsed, never run.")],
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write here instead of stdout.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing --output file.")] = False,
) -> None:
    """Convert an original biom3d config (upper-case keys, {fct, kwargs} modules) into today's format."""
    from biom3d.cli import config_cmd

    config_cmd.import_legacy(old, output, overwrite=overwrite)


# -- data ------------------------------------------------------------------------------------------------
@app.command()
def autoconfig(
    median: Annotated[tuple[float, float, float], typer.Option("--median", help="Median image shape D H W.")],
    max_dim: opt.MaxDim = None,
    max_pool: opt.MaxPool = None,
    max_batch: opt.MaxBatch = None,
    num_images: Annotated[int | None, typer.Option(
        "--num-images", min=1, help="Images in the dataset: the paper's batch cap, images // 20 (at least 2).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Patch size, pooling per axis, batch size and augmentation patch for a median shape (no data needed)."""
    from biom3d.cli import data_cmd

    budget = _budget({"max_dim": max_dim, "max_pool": max_pool, "max_batch": max_batch})
    data_cmd.autoconfig(median, budget=budget, num_images=num_images, as_json=as_json)


@app.command()
def preprocess(
    images: Annotated[Path, typer.Option("--images", "-i", help="Folder of images.")],
    masks: Annotated[Path, typer.Option("--masks", "-m", help="Folder of masks (paired with images by name).")],
    num_classes: Annotated[int, typer.Option("--num-classes", "-k", min=1, help="Foreground classes.")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Output folder [default: preprocessed/<images folder name>].")] = None,
    workers: Annotated[int, typer.Option(help="Worker processes (under 256 MiB of input: in-process, faster).", min=0)] = 2,
    name: Annotated[str | None, typer.Option(help="Run name written in the config.")] = None,
    multilabel: Annotated[bool, typer.Option("--multilabel", help="Masks are 4D multi-label (sigmoid outputs).")] = False,
    stack: opt.Stack = None,
    preprocessor: Annotated[str | None, typer.Option(help="Preprocessor id [default: the stack's].")] = None,
    reader: opt.Reader = None,
    norm: Annotated[str | None, typer.Option(help="Normalisation: zscore or ct [default: zscore].")] = None,
    channel_axis: Annotated[int | None, typer.Option(help="Channel axis of stored images (default: detect).")] = None,
    mask_fix: Annotated[str | None, typer.Option(help="auto, strict or binarize (see README) [default: auto].")] = None,
    max_dim: opt.MaxDim = None,
    max_pool: opt.MaxPool = None,
    max_batch: opt.MaxBatch = None,
    seed: Annotated[int, typer.Option(help="Seed of the fold split.")] = 42,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an output folder made from other data.")] = False,
) -> None:
    """Scan, fingerprint, auto-configure, normalise, resample, split folds; write a config for `biom3d train`."""
    from biom3d.cli import data_cmd

    params = {k: v for k, v in {"norm": norm, "channel_axis": channel_axis, "mask_fix": mask_fix}.items() if v is not None}
    data_cmd.preprocess(images=images, masks=masks, num_classes=num_classes, out=out, workers=workers, name=name,
                        multilabel=multilabel, stack=stack, preprocessor=preprocessor, params=params, reader=reader,
                        seed=seed, overwrite=overwrite, **_budget(locals()))


# -- training --------------------------------------------------------------------------------------------
@app.command()
def train(
    config: Annotated[Path | None, typer.Argument(help="Config (YAML), e.g. the one `biom3d preprocess` wrote.")] = None,
    resume: opt.Resume = None,
    finetune: opt.Finetune = None,
    epochs: opt.Epochs = None,
    iters_per_epoch: opt.ItersPerEpoch = None,
    batch_size: opt.BatchSize = None,
    lr: opt.Lr = None,
    fold: opt.Fold = None,
    workers: opt.Workers = None,
    fp16: opt.Fp16 = None,
    device: opt.Device = None,
    seed: opt.Seed = None,
    val_iters: opt.ValIters = None,
    compile: opt.Compile = None,
    set_: opt.Set = None,
    runs_dir: opt.RunsDir = None,
    strict_versions: opt.StrictVersions = False,
    devices: opt.Devices = None,
    gpus: opt.Gpus = None,
) -> None:
    """Train a model; writes runs/<name>-<timestamp>/ (config, checkpoints, log.csv, curves.png, snapshots/).
    Under torchrun, or with --devices/--gpus, every process trains one model with DDP (docs/distributed.md)."""
    from biom3d.cli import train_cmd

    if devices is not None or gpus is not None:
        from biom3d.core.launcher import launch

        launch(_state["argv"], devices=devices, gpus=gpus)  # replaces this process with torchrun's, for 2+ GPUs
    overrides = {**opt.set_pairs(set_), **opt.overrides(locals(), opt.TRAIN_KEYS)}
    train_cmd.train(config, resume=resume, finetune=finetune, overrides=overrides, runs_dir=runs_dir,
                    strict_versions=strict_versions)


# -- prediction and evaluation ---------------------------------------------------------------------------
@app.command()
def predict(
    runs: Annotated[list[Path], typer.Argument(
        help="Run folder(s), or exports (`biom3d export`: .pt, .onnx, .bioimageio.zip); several make an ensemble.")],
    input: Annotated[Path, typer.Option("--input", "-i", help="Image file, DICOM folder, or folder of images.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Output folder (created).")],
    tta: Annotated[bool | None, typer.Option("--tta/--no-tta", help="Flip test-time augmentation [default: run's].")] = None,
    overlap: Annotated[float | None, typer.Option(help="Tile overlap, 0 to <1 [default: run's, 0.5].", min=0.0, max=0.95)] = None,
    fast: Annotated[bool | None, typer.Option("--fast/--no-fast", help=(
        "Fast mode: tiles twice the patch per axis, overlap 0.25, no flips, unless --overlap/--tta are given "
        "(on the demo: 13.3x faster, Dice 0.973 vs 0.971; benchmarks/bench_predict.py --fast-run) "
        "[default: run's, off]."))] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N, mps.")] = "auto",
    checkpoint: opt.Checkpoint = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace existing output files.")] = False,
    skip_existing: Annotated[bool, typer.Option("--skip-existing", help="Keep the outputs that exist and predict the "
                                                "others (an interrupted prediction, or --shard part, run again).")] = False,
    reader: opt.Reader = None,
    writer: opt.Writer = None,
    strict_versions: opt.StrictVersions = False,
    shard: opt.Shard = None,
    backend: Annotated[Literal["torch", "onnxruntime"], typer.Option(
        help="Run a run folder's network with PyTorch, or with ONNX Runtime on the CPU (exported in memory and "
             "checked against the network; biom3d-core[onnx]).")] = "torch",
    probabilities: Annotated[Path | None, typer.Option(
        "--probabilities", help="Also save each image's probabilities before post-processing in this folder "
        "(not --output): <name>.npz, float16 (C, [D,] H, W) on the input's grid, for uncertainty or your own "
        "ensembling; np.load(path)['probabilities'].")] = None,
) -> None:
    """Predict masks, written in the input's format and metadata under the same relative names; under torchrun
    (or with --shard I/N) this process predicts its share of the inputs."""
    from biom3d.cli import predict_cmd

    predict_cmd.predict(runs, input, output, tta=tta, overlap=overlap, fast=fast, device=device, checkpoint=checkpoint,
                        overwrite=overwrite, skip_existing=skip_existing, reader=reader, writer=writer,
                        strict_versions=strict_versions, shard=shard, backend=backend,
                        probabilities=probabilities)


@app.command("eval")
def evaluate(
    pred: Annotated[Path, typer.Option("--pred", "-p", help="Folder of predicted masks.")],
    truth: Annotated[Path, typer.Option("--truth", "-t", help="Folder of ground-truth masks (paired by name).")],
    num_classes: Annotated[int | None, typer.Option("--num-classes", "-k", min=1, help="Classes [default: from the labels of all the files: the largest where a file holds several, else 1].")] = None,
    csv: Annotated[Path | None, typer.Option(help="CSV to write [default: <pred>/eval.csv].")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing CSV.")] = False,
    reader: Annotated[str | None, typer.Option(help="Reader id used for every file it reads [default: by suffix, "
                                               "then priority].")] = None,
    distances: Annotated[bool, typer.Option("--distances", help=(
        "Also the 95th-percentile Hausdorff distance (HD95) and the average symmetric surface distance (ASSD), "
        "as MONAI computes them, in the ground truth's spacing units (µm for TIFF, mm for NIfTI)."))] = False,
) -> None:
    """Dice and IoU (with --distances, HD95 and ASSD) per file, per class and mean; writes a CSV."""
    from biom3d.cli import predict_cmd

    predict_cmd.evaluate(pred, truth, num_classes=num_classes, csv=csv, overwrite=overwrite, reader=reader,
                         distances=distances)


# -- pipeline ----------------------------------------------------------------------------------------------
@app.command()
def run(
    config: Annotated[Path | None, typer.Argument(help="Config (YAML) naming data and stages.")] = None,
    images: Annotated[Path | None, typer.Option("--images", "-i", help="Training images (no config needed).")] = None,
    masks: Annotated[Path | None, typer.Option("--masks", "-m", help="Training masks.")] = None,
    num_classes: Annotated[int | None, typer.Option("--num-classes", "-k", min=1, help="Foreground classes.")] = None,
    test_images: Annotated[Path | None, typer.Option(help="Images to predict after training.")] = None,
    test_masks: Annotated[Path | None, typer.Option(help="Their ground truth, to evaluate.")] = None,
    name: Annotated[str | None, typer.Option(help="Pipeline name [default: the images folder's name].")] = None,
    cross_validation: Annotated[bool | None, typer.Option(
        "--cross-validation/--no-cross-validation", "--cv",
        help="Train one run per fold (folds/fold-K/), score each fold's held-out training images with the run "
             "that never saw them (cv/eval.csv), and predict the test images with the ensemble of the folds "
             "[default: cross_validation of the config, false].")] = None,
    probabilities: Annotated[Path | None, typer.Option(
        "--probabilities", help="Also save each test image's probabilities before post-processing in this folder "
        "(float16 .npz, as `biom3d predict --probabilities`) [default: data.probabilities of the config, "
        "none].")] = None,
    stack: opt.Stack = None,
    reader: opt.Reader = None,
    writer: opt.Writer = None,
    checkpoint: opt.Checkpoint = None,
    max_dim: opt.MaxDim = None,
    max_pool: opt.MaxPool = None,
    max_batch: opt.MaxBatch = None,
    # every `biom3d train` option, with the same meaning (tests/cli/test_shared_options.py checks)
    resume: opt.Resume = None,
    finetune: opt.Finetune = None,
    epochs: opt.Epochs = None,
    iters_per_epoch: opt.ItersPerEpoch = None,
    batch_size: opt.BatchSize = None,
    lr: opt.Lr = None,
    fold: opt.Fold = None,
    workers: opt.Workers = None,
    fp16: opt.Fp16 = None,
    device: opt.Device = None,
    seed: opt.Seed = None,
    val_iters: opt.ValIters = None,
    compile: opt.Compile = None,
    set_: opt.Set = None,
    runs_dir: opt.RunsDir = None,
    strict_versions: opt.StrictVersions = False,
    devices: opt.Devices = None,
    gpus: opt.Gpus = None,
) -> None:
    """Preprocess, train, predict and evaluate in one go; a re-run (or --resume FOLDER) resumes where it stopped.
    Under torchrun, or with --devices/--gpus, the ranks train with DDP and share the predictions (rank 0
    preprocesses and evaluates; docs/distributed.md)."""
    from biom3d.cli import run_cmd

    if devices is not None or gpus is not None:
        from biom3d.core.launcher import launch

        launch(_state["argv"], devices=devices, gpus=gpus)  # replaces this process with torchrun's, for 2+ GPUs

    given = {"stack": stack, "reader": reader, "writer": writer, "num_classes": num_classes,
             "cross_validation": cross_validation}
    overrides = {**opt.set_pairs(set_), **{k: v for k, v in given.items() if v is not None},
                 **opt.overrides(locals(), opt.TRAIN_KEYS), **opt.overrides(locals(), opt.AUTOCONFIG_KEYS)}
    run_cmd.run(config, images=images, masks=masks, test_images=test_images, test_masks=test_masks,
                probabilities=probabilities, name=name,
                runs_dir=runs_dir, resume=resume, finetune=finetune, checkpoint=checkpoint,
                strict_versions=strict_versions, overrides=overrides)


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the demo's data and results.")] = Path("biom3d-demo"),
    epochs: Annotated[int | None, typer.Option(help="Override the demo's epochs.", min=1)] = None,
    iters_per_epoch: Annotated[int | None, typer.Option(help="Override the demo's iterations per epoch.", min=1)] = None,
    stack: Annotated[str | None, typer.Option(help="Stack to demonstrate [default: the installed one of highest "
                                              "priority].")] = None,
) -> None:
    """Train, predict and evaluate on a real 3D nuclei volume (no data needed); prints the held-out Dice."""
    from biom3d.cli import demo as demo_mod

    demo_mod.run_demo(out, epochs=epochs, iters=iters_per_epoch, stack=stack)


def _budget(values: dict) -> dict[str, int]:
    """The auto-configuration flags given (``locals()``), as keyword arguments."""
    return {name: values[name] for name in opt.AUTOCONFIG_KEYS if values.get(name) is not None}


# -- entry point -------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    """Run the app; every error becomes one paragraph on stderr and an exit code (--debug: the traceback):
    a biom3d error its own, a file-system error 2 (a path the user gave) or 1 (disk full, I/O), anything
    else 1, said to be a bug."""
    _setup_logging()
    _state["argv"] = list(sys.argv[1:] if argv is None else argv)  # what --devices re-runs under torchrun
    from biom3d.cli.commands import add_plugin_commands

    add_plugin_commands(app, sys.argv[1:] if argv is None else argv)  # commands from plugins (`biom3d gui`)
    try:
        app(args=argv, standalone_mode=True)
    except SystemExit as exc:
        return _exit_code(exc.code)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        return 130
    except Exception as exc:
        if _state["debug"]:
            raise
        exc = _as_biom3d_error(exc)
        typer.echo(f"error: {exc}", err=True)
        return getattr(exc, "exit_code", 1)
    return 0


def _setup_logging() -> None:
    import logging

    logger = logging.getLogger("biom3d")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


def _as_biom3d_error(exc: Exception) -> Exception:
    """``exc`` if it is a biom3d error (its message is for the user), else one made from it."""
    errors = sys.modules.get("biom3d.core.errors")
    if errors is not None and isinstance(exc, errors.Biom3dError):
        return exc
    from biom3d.core.atomic import os_error
    from biom3d.core.errors import Biom3dError

    if isinstance(exc, OSError):
        return os_error(exc)
    if isinstance(exc, MemoryError):
        return Biom3dError("out of memory; use smaller inputs, a smaller patch or batch size, or a machine with "
                           "more memory")
    text = " ".join(str(exc).split())
    return Biom3dError(f"unexpected {type(exc).__name__}: {text[:300]}{'...' if len(text) > 300 else ''}. This is "
                       "a bug in biom3d or in a plugin; run again with --debug for the traceback and report it")


def _exit_code(code: object) -> int:
    if code is None:
        return 0
    return code if isinstance(code, int) else 1


if __name__ == "__main__":
    sys.exit(main())

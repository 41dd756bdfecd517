"""Overhead of our training step: `SegTrainer._train_epoch` (autocast and GradScaler as configured, gradient
clipping, loss accumulation, the default callbacks' per-batch hooks with the progress bar on) against a bare
PyTorch loop of the same model, loss and optimizer, on the same pre-made batches (no data loader).

    python benchmarks/bench_train_step.py [--quick] [--repeats 5] [--warmup 1] [--steps 8] [--patch 48]

Both: unet3d-vgg-deep (default widths 32..320, deep supervision), deep-supervision dice-ce, SGD Nesterov momentum
0.99, clipping at 12, batch 2 of 48^3 (one step ~0.3-1 s on 2 CPU threads, so that timer noise stays small);
--quick: 32^3, 3 steps. Timing: one process, rounds of ``--steps`` steps, ours and the bare loop taking turns
(alternating who goes first) so that load from other processes hits both alike; median over ``--repeats``
rounds after ``--warmup``. Memory: each case alone in a fresh subprocess (1 warm-up round + 1 round), peak RSS.

Bar (issue: Trainer): overhead of ours over the bare loop <= 5% per step.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    THREADS,
    ChildError,
    ChildResult,
    base_parser,
    child_spec,
    emit,
    machine_note,
    median,
    print_table,
    run_child,
)

BATCH, CLIP = 2, 12.0
FULL = {"patch": 48, "steps": 8}
QUICK = {"patch": 32, "steps": 3}


def main() -> None:
    parser = base_parser(__doc__, repeats=5)
    parser.add_argument("--steps", type=int, help="steps per round (default 8, --quick 3)")
    parser.add_argument("--patch", type=int, help="cubic patch side (default 48, --quick 32)")
    args = parser.parse_args()
    if args.child:
        CHILDREN[args.child](child_spec(args))
        return
    size = QUICK if args.quick else FULL
    spec = {"patch": args.patch or size["patch"], "steps": args.steps or size["steps"],
            "warmup": args.warmup, "repeats": args.repeats}
    print(f"batch {BATCH} x 1 x {spec['patch']}^3, {spec['steps']} steps per round, warm-up {args.warmup} round(s), "
          f"median of {args.repeats}; {THREADS} torch threads, CPU; {machine_note()}")
    timing = _run("time", spec)
    memory = {case: _run("memory", {**spec, "case": case, "warmup": 1, "repeats": 1}) for case in ("ours", "bare")}
    _report(timing, memory, spec["steps"])


def _run(child: str, spec: dict) -> ChildResult | str:
    try:
        return run_child([sys.executable, __file__, "--child", child, "--spec", json.dumps(spec)])
    except ChildError as exc:
        print(exc, file=sys.stderr)
        return "failed"


# -- children -------------------------------------------------------------------------------------------------------
def _child_time(spec: dict) -> None:
    """Rounds of ours and of the bare loop, alternating which goes first."""
    with tempfile.TemporaryDirectory() as tmp:
        cases = {"ours": _ours(spec, Path(tmp)), "bare": _bare(spec)}
        batches = _batches(spec)
        samples: dict[str, list[float]] = {k: [] for k in cases}
        for r in range(spec["warmup"] + spec["repeats"]):
            order = list(cases) if r % 2 == 0 else list(cases)[::-1]
            for name in order:
                seconds = cases[name](batches)
                if r >= spec["warmup"]:
                    samples[name].append(seconds)
    emit({"times": samples})


def _child_memory(spec: dict) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        run = _ours(spec, Path(tmp)) if spec["case"] == "ours" else _bare(spec)
        batches = _batches(spec)
        times = [run(batches) for _ in range(spec["warmup"] + spec["repeats"])]
    emit({"times": times})


CHILDREN = {"time": _child_time, "memory": _child_memory}


def _batches(spec: dict) -> list[dict]:
    from _common import random_batch

    return [random_batch((spec["patch"],) * 3, BATCH, seed=i) for i in range(spec["steps"])]


def _ours(spec: dict, run_dir: Path):
    """A SegTrainer set up as `fit` does (CPU, fp16 off there), with the default callbacks; returns a function
    that runs one `_train_epoch` over the given batches and returns its seconds."""
    import torch

    from biom3d.core.builtins.trainer import TrainJob, make_optimizer, resolve_device
    from biom3d.core.config import DEFAULT_CALLBACKS, TrainConfig
    from biom3d.core.discovery import get_registry

    torch.set_num_threads(THREADS)
    model, loss, _, ctx = _build(spec)
    ctx = ctx.replace(run_dir=run_dir)
    registry = get_registry()
    cfg = TrainConfig(device="cpu", workers=0, iters_per_epoch=spec["steps"], epochs=10**6, grad_clip=CLIP)
    callbacks = [registry.resolve("callback", name).build({}, ctx) for name in DEFAULT_CALLBACKS]
    trainer = registry.resolve("trainer", "seg-trainer").build({}, ctx)
    job = TrainJob(model=model, loss=loss, metrics=[], data=None, callbacks=callbacks, train=cfg, run_dir=run_dir)
    # what `fit` does before its loop (fit itself also builds loaders and runs epoch-end callbacks)
    trainer.job, trainer.train_cfg, trainer.run_dir, trainer.epochs = job, cfg, run_dir, cfg.epochs
    trainer.device = resolve_device(cfg.device)
    trainer.model, trainer.loss = model.to(trainer.device), loss
    trainer.optimizer = make_optimizer(model.parameters(), cfg)
    trainer.amp = cfg.fp16 and trainer.device.type == "cuda"
    trainer.scaler = torch.amp.GradScaler("cuda", enabled=trainer.amp)
    trainer.monitor, trainer.monitor_higher = "train_loss", False
    progress = next(cb for cb in callbacks if type(cb).__name__ == "Progress")
    epoch = 0

    def run(batches: list[dict]) -> float:
        nonlocal epoch
        trainer.epoch = epoch
        trainer._call("on_epoch_begin", epoch)  # learning rate, progress bar (once per epoch: not timed)
        start = time.perf_counter()
        trainer._train_epoch(batches)
        seconds = time.perf_counter() - start
        progress.bar.close()
        epoch += 1
        return seconds

    return run


def _bare(spec: dict):
    """The textbook loop with the same model (same initial weights), loss and optimizer settings."""
    import torch

    torch.set_num_threads(THREADS)
    model, loss_fn, optimizer, _ = _build(spec)

    def run(batches: list[dict]) -> float:
        model.train()
        start = time.perf_counter()
        for batch in batches:
            loss = loss_fn(model(batch["image"]), batch["mask"])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
            optimizer.step()
        return time.perf_counter() - start

    return run


def _build(spec: dict):
    from _common import build_training

    return build_training((spec["patch"],) * 3)


# -- report ---------------------------------------------------------------------------------------------------------
def _report(timing: ChildResult | str, memory: dict[str, ChildResult | str], steps: int) -> None:
    if not isinstance(timing, ChildResult):
        print(f"timing {timing}")
        return
    times = timing.data["times"]
    overheads = [o / b - 1 for o, b in zip(times["ours"], times["bare"], strict=True)]
    rows = []
    for name, label in (("bare", "bare PyTorch loop (reference)"), ("ours", "biom3d SegTrainer._train_epoch")):
        t = times[name]
        mem = memory[name]
        rows.append([label, median(t), min(t), median(t) / steps,
                     f"{median(overheads) * 100:+.1f}%" if name == "ours" else "",
                     f"{mem.peak_mib:.0f}" if isinstance(mem, ChildResult) else mem])
    print()
    print_table(["case", "median s/round", "min s/round", "s/step", "overhead (median of rounds)",
                 "peak RSS MiB"], rows)
    by_min = min(times["ours"]) / min(times["bare"]) - 1
    print(f"\noverhead per round: {', '.join(f'{o * 100:+.1f}%' for o in overheads)}; on the fastest rounds "
          f"{by_min * 100:+.1f}%; target <= +5%")


if __name__ == "__main__":
    main()

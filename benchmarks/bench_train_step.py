"""Training steps at real patch sizes, ours against the original biom3d 0.1.2 (default); or the overhead of our
trainer over a bare PyTorch loop (``--overhead``).

    python benchmarks/bench_train_step.py --patch 96 112 96 --batch 2   # one patch: ours vs the original
    python benchmarks/bench_train_step.py --sizes                       # 64^3, 96x112x96 and 128^3
    python benchmarks/bench_train_step.py --quick                       # 32^3 and 48^3, 2 steps: a smoke test
    python benchmarks/bench_train_step.py --overhead [--patch 48] [--steps 8] [--repeats 5]
    python benchmarks/bench_train_step.py --compile [--patch 64] [--repeats 5]   # eager vs torch.compile

Ours vs the original, per patch (pooling from auto-configuration for that patch, which both share: (4, 4, 4) at
64^3 and 96x112x96, (5, 5, 5) at 128^3), batch 2 of pre-made batches (no data loader), CPU, 2 threads:

* ours: ``SegTrainer._train_epoch`` over one batch per step as ``fit`` sets it up (the paper stack: unet3d-vgg-deep
  without deep supervision as the original's default, widths 32..320, dice-ce, SGD Nesterov momentum 0.99, clipping at 12,
  default callbacks with the progress bar);
* the original: ``benchmarks/orig/train_step.py`` in its venv: its UNet3DVGGDeep (widths 32..320, deep
  supervision off as in its default config; ``--orig-deep`` turns it on), its DiceCEnnUNet loss, its SGD, the
  CPU branch of its ``seg_train``.

Each side runs in its own process: ``--warmup`` untimed steps, then ``--repeats`` timed ones. When both processes
fit in the available memory (``--interleave auto``: 64^3 and 96x112x96 on 24 GB, not 128^3) they stay alive and
take turns step by step, who goes first alternating per round, so that a change of machine load hits both alike;
otherwise one runs after the other (who goes first alternating per patch). Reported: median and min seconds per
step, median CPU seconds (user + system), median system seconds and minor page faults per step (fresh pages:
large freed-and-reallocated tensors), peak RSS of each process (wait4). The figures are noisy when other processes
load the machine (see the load averages printed): the CPU seconds are less sensitive to that than the wall time.

``--overhead`` (issue: Trainer; bar: ours <= 5% over the bare loop): one process, rounds of ``--steps`` steps, ours
and the bare loop taking turns (alternating who goes first) on the same batches; median over ``--repeats`` rounds
after ``--warmup``; memory of each case alone in a fresh subprocess. Default 48^3, 8 steps; --quick 32^3, 3 steps.

``--compile`` (issue 15: ``train.compile``): one process, two trainers from the same initial weights, one calling
the network eagerly and one through ``torch.compile`` (inductor, as ``train.compile: true`` runs it); the first
compiled step is the compile time (less one eager step); then steps alternate, who goes first alternating, median
of ``--repeats``. The losses of the two are printed side by side (the same maths: they agree to float error).
Default 64^3, batch 2; --quick 32^3.
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    ORIG_DIR,
    ORIG_MISSING,
    THREADS,
    ChildError,
    ChildResult,
    StepWorker,
    base_parser,
    cell,
    child_spec,
    emit,
    machine_note,
    measured,
    median,
    orig_available,
    print_orig_note,
    print_table,
    ratio,
    run_child,
    serve_steps,
)

CLIP = 12.0
SIZES = [(64, 64, 64), (96, 112, 96), (128, 128, 128)]
QUICK_SIZES = [(32, 32, 32), (48, 48, 48)]
OVERHEAD = {"patch": 48, "steps": 8}
OVERHEAD_QUICK = {"patch": 32, "steps": 3}
# the children have no workers, so their peak RSS (wait4) is the figure; reading /proc/PID/smaps_rollup of a
# multi-GB process every 0.2 s costs the driver ~10% of a CPU and takes the child's mm lock: poll rarely
SAMPLE_EVERY = 5.0


def main() -> None:
    parser = base_parser(__doc__, repeats=5)
    parser.add_argument("--patch", type=int, nargs="+", metavar="N",
                        help="patch: D H W, or one side of a cube (default: 96 112 96; --overhead: 48)")
    parser.add_argument("--sizes", action="store_true", help="run 64^3, 96x112x96 and 128^3")
    parser.add_argument("--batch", type=int, default=2, help="batch size (default 2)")
    parser.add_argument("--orig-deep", action="store_true", help="the original with its deep supervision on")
    parser.add_argument("--interleave", choices=["auto", "yes", "no"], default="auto",
                        help="alternate steps of ours and the original, both processes alive (auto: when both "
                             "fit in the available memory)")
    parser.add_argument("--overhead", action="store_true", help="ours vs a bare PyTorch loop instead")
    parser.add_argument("--steps", type=int, help="--overhead: steps per round (default 8, --quick 3)")
    parser.add_argument("--compile", action="store_true", help="eager vs torch.compile steps instead")
    args = parser.parse_args()
    if args.child:
        CHILDREN[args.child](child_spec(args))
        return
    if args.patch is not None and len(args.patch) not in (1, 3):
        parser.error("--patch takes 1 or 3 sizes")
    if args.overhead:
        _main_overhead(args)
    elif args.compile:
        _main_compile(args)
    else:
        _main_vs_orig(args)


# -- ours vs the original ---------------------------------------------------------------------------------------
def _main_vs_orig(args) -> None:
    if args.patch:
        sizes = [tuple(args.patch * 3 if len(args.patch) == 1 else args.patch)]
    else:
        sizes = QUICK_SIZES if args.quick else SIZES if args.sizes else [(96, 112, 96)]
    repeats, warmup = (min(args.repeats, 2), args.warmup) if args.quick else (args.repeats, args.warmup)
    print(f"training step, batch {args.batch}, CPU, {THREADS} torch threads; warm-up {warmup} step(s), "
          f"median of {repeats}; {machine_note()}")
    results = []
    for i, patch in enumerate(sizes):
        spec = {"patch": list(patch), "batch": args.batch, "warmup": warmup, "repeats": repeats}
        pools = _pools(patch)
        order = ["ours", "orig"] if i % 2 == 0 else ["orig", "ours"]
        both = orig_available(args.orig_python) and (
            args.interleave == "yes" or (args.interleave == "auto" and _both_fit(patch, args.batch)))
        if both:
            done = _interleaved(args, spec, pools, order)
        else:
            runs = {"ours": lambda s=spec: _run("steps", s),
                    "orig": lambda s=spec, p=pools: _run_orig(args, s, p)}
            done = {name: runs[name]() for name in order}
        results.append((patch, pools, done))
        _report_vs_orig(patch, pools, done, "steps alternating" if both else "one process after the other")
    print(f"\nafter: {machine_note()}")
    if len(results) > 1:
        _summary(results)
    print_orig_note(*(r[2]["orig"] for r in results))


def _pools(patch) -> list[int]:
    from _common import pools_for

    return list(pools_for(patch))


def _both_fit(patch, batch: int) -> bool:
    """Whether ours and the original fit in memory at once (each peaks at ~6.5 GiB per million voxels of the
    batch / 2 on this network: 6.2 GiB for ours at 96x112x96, batch 2)."""
    need_gib = 2 * 6.5 * math.prod(patch) * batch / 2 / 1.03e6
    try:
        with open("/proc/meminfo", encoding="utf-8") as f:
            available = next(int(ln.split()[1]) for ln in f if ln.startswith("MemAvailable:")) / 2**20
    except (OSError, StopIteration, ValueError):
        return False
    return need_gib < 0.9 * available


def _interleaved(args, spec: dict, pools: list[int], order: list[str]) -> dict[str, ChildResult | str]:
    """Both sides alive, taking turns step by step (who goes first alternates per round)."""
    workers: dict[str, StepWorker] = {}
    steps: dict[str, list[dict]] = {"ours": [], "orig": []}
    try:
        for name in order:
            workers[name] = (StepWorker([sys.executable, __file__, "--child", "serve", "--spec", json.dumps(spec)])
                             if name == "ours" else StepWorker(_orig_cmd(args, spec, pools) + ["--serve"], orig=True))
        for r in range(spec["warmup"] + spec["repeats"]):
            for name in order if r % 2 == 0 else order[::-1]:
                figures = workers[name].step()
                if r >= spec["warmup"]:
                    steps[name].append(figures)
        done: dict[str, ChildResult | str] = {}
        for name, worker in workers.items():
            result = worker.finish()
            result.data["steps"] = steps[name]
            done[name] = result
        return done
    except ChildError as exc:
        print(exc, file=sys.stderr)
        for worker in workers.values():
            worker.kill()
        return {"ours": "failed", "orig": "failed"}


def _orig_cmd(args, spec: dict, pools: list[int]) -> list[str]:
    cmd = [args.orig_python, str(ORIG_DIR / "train_step.py"), "--patch", *map(str, spec["patch"]),
           "--pools", *map(str, pools), "--batch", str(spec["batch"]), "--warmup", str(spec["warmup"]),
           "--repeats", str(spec["repeats"])]
    return cmd + ["--deep"] if args.orig_deep else cmd


def _run_orig(args, spec: dict, pools: list[int]) -> ChildResult | str:
    if not orig_available(args.orig_python):
        return ORIG_MISSING
    cmd = _orig_cmd(args, spec, pools)
    try:
        return run_child(cmd, orig=True, sample_every=SAMPLE_EVERY)
    except ChildError as exc:
        print(exc, file=sys.stderr)
        return "failed"


def _stats(result: ChildResult) -> dict[str, float]:
    steps = result.data["steps"]
    return {
        "median": median([s["wall"] for s in steps]),
        "min": min(s["wall"] for s in steps),
        "cpu": median([s["user"] + s["sys"] for s in steps]),
        "sys": median([s["sys"] for s in steps]),
        "faults": median([s["minflt"] for s in steps]) / 1e6,
        "rss": result.peak_mib,
    }


def _report_vs_orig(patch, pools, done: dict, how: str) -> None:
    print(f"\npatch {'x'.join(map(str, patch))}, pools {tuple(pools)} ({how}; {machine_note()})")
    rows = []
    for name, label in (("orig", "original biom3d 0.1.2"), ("ours", "biom3d SegTrainer._train_epoch")):
        res = done[name]
        if isinstance(res, ChildResult):
            s = _stats(res)
            rows.append([label, s["median"], s["min"], s["cpu"], s["sys"], f"{s['faults']:.2f}", f"{s['rss']:.0f}"])
        else:
            rows.append([label, cell(res), "", "", "", "", ""])
    print_table(["case", "median s/step", "min s/step", "CPU s/step", "sys s/step", "minor faults (M)/step",
                 "peak RSS MiB"], rows)
    if all(isinstance(done[k], ChildResult) for k in done):
        o, t = _stats(done["ours"]), _stats(done["orig"])
        print(f"ours / original: time {ratio(o['median'], t['median'])} (median), {ratio(o['min'], t['min'])} "
              f"(min), CPU {ratio(o['cpu'], t['cpu'])}, peak RSS {ratio(o['rss'], t['rss'])}")


def _summary(results) -> None:
    print("\nsummary (median s/step, peak RSS MiB)")
    rows = []
    for patch, pools, done in results:
        o, t = done["ours"], done["orig"]
        so = _stats(o) if isinstance(o, ChildResult) else None
        st = _stats(t) if isinstance(t, ChildResult) else None
        rows.append(["x".join(map(str, patch)), str(tuple(pools)),
                     so["median"] if so else cell(o), st["median"] if st else cell(t),
                     ratio(so and so["median"], st and st["median"]),
                     f"{so['rss']:.0f}" if so else "", f"{st['rss']:.0f}" if st else ""])
    print_table(["patch", "pools", "ours s/step", "original s/step", "ours/original", "ours RSS", "original RSS"],
                rows)


def _child_steps(spec: dict) -> None:
    """Our trainer's steps, each one ``_train_epoch`` over a single pre-made batch."""
    from _common import random_batch

    patch = tuple(spec["patch"])
    with tempfile.TemporaryDirectory() as tmp:
        run = _ours({"patch": patch, "steps": 1}, Path(tmp))
        batches = [[random_batch(patch, spec["batch"], seed=i)] for i in range(2)]
        losses = []
        steps = [measured(lambda i=i: losses.append(run(batches[i % 2], loss=True)))
                 for i in range(spec["warmup"] + spec["repeats"])]
    emit({"steps": steps[spec["warmup"]:], "warmup": steps[:spec["warmup"]], "losses": losses})


def _child_serve(spec: dict) -> None:
    """:func:`_child_steps` one step per request (``_common.StepWorker``)."""
    from _common import random_batch

    patch = tuple(spec["patch"])
    with tempfile.TemporaryDirectory() as tmp:
        run = _ours({"patch": patch, "steps": 1}, Path(tmp))
        batches = [[random_batch(patch, spec["batch"], seed=i)] for i in range(2)]
        losses: list[float] = []
        serve_steps(lambda: losses.append(run(batches[len(losses) % 2], loss=True)), lambda: {"losses": losses})


# -- eager vs torch.compile -------------------------------------------------------------------------------------
def _main_compile(args) -> None:
    patch = tuple(args.patch * 3 if args.patch and len(args.patch) == 1 else args.patch or ((32,) * 3 if args.quick
                                                                                           else (64,) * 3))
    repeats = min(args.repeats, 2) if args.quick else args.repeats
    spec = {"patch": list(patch), "batch": args.batch, "warmup": args.warmup, "repeats": repeats}
    print(f"training step, patch {patch}, batch {args.batch}, CPU, {THREADS} torch threads; first compiled step = "
          f"compile; warm-up {args.warmup}, median of {repeats}, alternating; {machine_note()}")
    result = _run("compile", spec)
    if not isinstance(result, ChildResult):
        print(f"compile: {result}")
        return
    d = result.data
    eager, compiled = median(d["eager"]), median(d["compiled"])
    print_table(["case", "first step s", "median s/step", "min s/step", "losses"],
                [["eager", d["first"]["eager"], eager, min(d["eager"]), " ".join(f"{v:.5f}" for v in d["loss_eager"])],
                 ["torch.compile (inductor)", d["first"]["compiled"], compiled, min(d["compiled"]),
                  " ".join(f"{v:.5f}" for v in d["loss_compiled"])]])
    print(f"compile time ~ {d['first']['compiled'] - d['first']['eager']:.1f} s; compiled/eager step: "
          f"{compiled / eager:.3f}x; break-even: {_break_even(d, eager, compiled)}; peak RSS "
          f"{result.peak_mib:.0f} MiB (both trainers); {d['warnings'] or 'no fallback'}; after: {machine_note()}")


def _break_even(d: dict, eager: float, compiled: float) -> str:
    saved = eager - compiled
    return f"after ~{(d['first']['compiled'] - d['first']['eager']) / saved:.0f} steps" if saved > 0 else "never (no gain)"


def _child_compile(spec: dict) -> None:
    import copy
    import logging

    from _common import random_batch

    from biom3d.core.compiling import compiled

    warnings: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: warnings.append(record.getMessage())
    logging.getLogger("biom3d").addHandler(handler)
    patch = tuple(spec["patch"])
    with tempfile.TemporaryDirectory() as tmp:
        runs, trainers = {}, {}
        for name in ("eager", "compiled"):
            (Path(tmp) / name).mkdir()
            runs[name], trainers[name] = _ours({"patch": patch, "steps": 1}, Path(tmp) / name, trainer_too=True)
        trainers["compiled"].model.load_state_dict(copy.deepcopy(trainers["eager"].model.state_dict()))
        trainers["compiled"].forward = compiled(trainers["compiled"].model)
        batches = [[random_batch(patch, spec["batch"], seed=i)] for i in range(2)]
        first, times, losses = {}, {k: [] for k in runs}, {k: [] for k in runs}
        for name in runs:
            start = time.perf_counter()
            losses[name].append(runs[name](batches[0], loss=True))
            first[name] = time.perf_counter() - start
        for r in range(spec["warmup"] + spec["repeats"]):
            for name in (list(runs) if r % 2 == 0 else list(runs)[::-1]):
                start = time.perf_counter()
                losses[name].append(runs[name](batches[(r + 1) % 2], loss=True))
                if r >= spec["warmup"]:
                    times[name].append(time.perf_counter() - start)
    emit({"first": first, "eager": times["eager"], "compiled": times["compiled"], "loss_eager": losses["eager"],
          "loss_compiled": losses["compiled"], "warnings": "; ".join(warnings)})


# -- ours vs a bare loop ----------------------------------------------------------------------------------------
def _main_overhead(args) -> None:
    size = OVERHEAD_QUICK if args.quick else OVERHEAD
    spec = {"patch": args.patch[0] if args.patch else size["patch"], "steps": args.steps or size["steps"],
            "warmup": args.warmup, "repeats": args.repeats}
    print(f"batch 2 x 1 x {spec['patch']}^3, {spec['steps']} steps per round, warm-up {args.warmup} round(s), "
          f"median of {args.repeats}; {THREADS} torch threads, CPU; {machine_note()}")
    timing = _run("time", spec)
    memory = {case: _run("memory", {**spec, "case": case, "warmup": 1, "repeats": 1}) for case in ("ours", "bare")}
    _report_overhead(timing, memory, spec["steps"])


def _run(child: str, spec: dict) -> ChildResult | str:
    try:
        return run_child([sys.executable, __file__, "--child", child, "--spec", json.dumps(spec)],
                         sample_every=SAMPLE_EVERY)
    except ChildError as exc:
        print(exc, file=sys.stderr)
        return "failed"


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


CHILDREN = {"time": _child_time, "memory": _child_memory, "steps": _child_steps, "serve": _child_serve,
            "compile": _child_compile}


def _batches(spec: dict) -> list[dict]:
    from _common import random_batch

    return [random_batch(_cube(spec["patch"]), 2, seed=i) for i in range(spec["steps"])]


def _cube(patch) -> tuple[int, int, int]:
    return tuple(patch) if isinstance(patch, list | tuple) else (patch,) * 3


def _ours(spec: dict, run_dir: Path, *, trainer_too: bool = False):
    """A SegTrainer set up as `fit` does (CPU, fp16 off there), with the default callbacks; returns a function
    that runs one `_train_epoch` over the given batches and returns its seconds (or its mean loss), and with
    ``trainer_too`` the trainer as well."""
    import torch

    from biom3d.core.builtins.plugin import DEFAULT_CALLBACKS
    from biom3d.core.builtins.trainer import TrainJob, make_optimizer, resolve_device
    from biom3d.core.config import TrainConfig
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
    trainer.forward = trainer.model
    trainer.optimizer = make_optimizer(model.parameters(), cfg)
    trainer.amp = cfg.fp16 and trainer.device.type == "cuda"
    trainer.scaler = torch.amp.GradScaler("cuda", enabled=trainer.amp)
    trainer.monitor, trainer.monitor_higher = "train_loss", False
    progress = next(cb for cb in callbacks if type(cb).__name__ == "Progress")
    epoch = 0

    def run(batches: list[dict], loss: bool = False) -> float:
        nonlocal epoch
        trainer.epoch = epoch
        trainer._call("on_epoch_begin", epoch)  # learning rate, progress bar (once per epoch: not timed)
        start = time.perf_counter()
        mean_loss = trainer._train_epoch(batches)
        seconds = time.perf_counter() - start
        progress.bar.close()
        epoch += 1
        return mean_loss if loss else seconds

    return (run, trainer) if trainer_too else run


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

    return build_training(_cube(spec["patch"]))


def _report_overhead(timing: ChildResult | str, memory: dict[str, ChildResult | str], steps: int) -> None:
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

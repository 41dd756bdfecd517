"""Training throughput with DistributedDataParallel: 1 process x 2 threads against 2 processes x 1 thread
(torchrun, gloo) on this CPU, at the same global batch, the same data, model and schedule (and, for scale,
1 process x 1 thread).

    python benchmarks/bench_ddp.py                 # patch 32^3, global batch 4, 2 timed epochs of 3 steps
    python benchmarks/bench_ddp.py --quick         # a smoke test: 16x24x24, 1 timed epoch of 2 steps
    python benchmarks/bench_ddp.py --device cuda   # on a GPU machine: 1 GPU, fp32 and the AMP path

Each case is a real ``Builder.train`` (what ``biom3d train`` runs) in fresh processes: the paper's stack
(unet3d-vgg-deep, widths 32..320, dice-ce, SGD), no validation, data-loader in the training
process (``workers: 0``: both sides have 2 cores, extra workers would only compete for them), on a synthetic
dataset preprocessed by ``biom3d preprocess``. The DDP case runs under ``python -m torch.distributed.run
--standalone --nproc_per_node=2``: each rank trains on 2 of the 4 patches of a global batch, so one step of either
case is one optimiser step on 4 patches. patches/s = global batch x steps / epoch seconds, from the run's
history, after ``--warmup`` untimed epochs; median over ``--repeats`` rounds, the two cases alternating who goes
first. CPU seconds per patch: the training loops' CPU time (every thread of every rank) per patch. Memory: each
rank's own peak RSS (VmHWM).

What to expect on 2 idle cores: DDP pays for the gradient all-reduce and gives up the threads' shared caches,
and gains from two independent Python loops (data loading, augmentation and the optimiser step run in parallel
instead of one after the other), so the ratio is near 1; its point is the many-GPU case. On a busy machine
the two-thread process loses much more (its threads wait for each other whenever one is descheduled): the row
"1 process x 1 thread" shows what one of the two ranks would do alone, and the CPU seconds per patch how much
of the difference is that waiting. Peak memory per rank is about that of one process at the per-rank batch,
plus DDP's gradient buckets (about the model's size).
"""

from __future__ import annotations

import json
import sys
import tempfile
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
    make_dataset_in_child,
    median,
    print_table,
    ratio,
    run_child,
    tagged_results,
)

FULL = {"shape": (40, 48, 48), "patch": [32, 32, 32], "pools": [3, 3, 3], "batch": 4, "steps": 3, "timed": 2, "n": 6}
QUICK = {"shape": (24, 32, 32), "patch": [16, 24, 24], "pools": [2, 2, 2], "batch": 4, "steps": 2, "timed": 1, "n": 4}


def main() -> None:
    parser = base_parser(__doc__, repeats=2, warmup=1)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                        help="cpu: 1x2 threads vs 2x1 (DDP); cuda: 1 GPU, fp32 vs AMP")
    args = parser.parse_args()
    if args.child:
        CHILDREN[args.child](child_spec(args))
        return
    size = QUICK if args.quick else FULL
    repeats, warmup = (1, 1) if args.quick else (args.repeats, args.warmup)
    with tempfile.TemporaryDirectory(prefix="bench-ddp-") as tmp:
        root = Path(tmp)
        make_dataset_in_child(root / "raw", size["n"], size["shape"])
        run_child([sys.executable, __file__, "--child", "prep", "--spec", json.dumps({"root": str(root)})])
        spec = {"config": str(root / "prep" / "config.yaml"), "runs": str(root / "runs"), "patch": size["patch"],
                "pools": size["pools"], "batch": size["batch"], "steps": size["steps"], "epochs": warmup + size["timed"],
                "device": args.device}
        cases = _cases(args.device)
        print(f"training throughput, global batch {size['batch']}, patch {'x'.join(map(str, size['patch']))}, "
              f"{size['timed']} timed epoch(s) of {size['steps']} steps after {warmup} warm-up, median of {repeats} "
              f"round(s); "
              f"{machine_note()}")
        figures: dict[str, list[dict]] = {name: [] for name in cases}
        for r in range(repeats):
            for name in list(cases) if r % 2 == 0 else list(cases)[::-1]:
                try:
                    figures[name].append(_measure(cases[name], spec, warmup))
                    print(f"  round {r + 1}, {name}: {figures[name][-1]['rate']:.2f} patches/s", file=sys.stderr)
                except ChildError as exc:
                    print(f"{name}: {exc}", file=sys.stderr)
    _report(cases, figures, size["batch"])
    print(f"\nafter: {machine_note()}")


def _cases(device: str) -> dict[str, dict]:
    if device == "cuda":
        return {"1 GPU, fp32": {"nproc": 1, "threads": THREADS, "fp16": False},
                "1 GPU, AMP (fp16)": {"nproc": 1, "threads": THREADS, "fp16": True}}
    return {"1 process x 2 threads": {"nproc": 1, "threads": 2, "fp16": False},
            "2 processes x 1 thread (DDP, gloo)": {"nproc": 2, "threads": 1, "fp16": False},
            "1 process x 1 thread (for scale)": {"nproc": 1, "threads": 1, "fp16": False}}


def _measure(case: dict, spec: dict, warmup: int) -> dict:
    """One training in fresh processes: patches/s of the timed epochs and every rank's peak RSS."""
    child = [__file__, "--child", "train", "--spec", json.dumps({**spec, **case})]
    if case["nproc"] > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={case['nproc']}",
               *child]
    else:
        cmd = [sys.executable, *child]
    result: ChildResult = run_child(cmd)
    ranks = sorted(tagged_results(result.log), key=lambda d: d["rank"])
    times = ranks[0]["times"][warmup:]
    patches = spec["batch"] * spec["steps"] * len(times)
    return {"rate": patches / sum(times), "cpu": sum(sum(d["cpu"][warmup:]) for d in ranks) / patches,
            "rss": [d["self_peak_mib"] for d in ranks], "world": len(ranks)}


def _report(cases: dict, figures: dict[str, list[dict]], batch: int) -> None:
    rates = {name: median([f["rate"] for f in runs]) if runs else float("nan") for name, runs in figures.items()}
    cpu = {name: median([f["cpu"] for f in runs]) if runs else float("nan") for name, runs in figures.items()}
    reference = next(iter(cases))
    rows = []
    for name, runs in figures.items():
        rss = [max(f["rss"][r] for f in runs) for r in range(runs[0]["world"])] if runs else []
        rows.append([name, rates[name], ratio(rates[name], rates[reference]), cpu[name],
                     ratio(cpu[reference], cpu[name]), " / ".join(f"{v:.0f}" for v in rss) or "failed",
                     f"{sum(rss):.0f}" if rss else "n/a"])
    print()
    print_table(["case", "patches/s", f"vs {reference}", "CPU s/patch", "CPU efficiency",
                 "peak RSS per rank (MiB)", "sum (MiB)"], rows)
    print("\nCPU s/patch: CPU seconds of the training loops, all ranks and threads, per patch; less sensitive to the "
          "machine's load than patches/s (a multi-threaded process loses more to a busy machine: its threads wait "
          "for each other)")


# -- children -----------------------------------------------------------------------------------------------------
def _child_prep(spec: dict) -> None:
    from biom3d.core.stages.preprocess import preprocess_dataset

    root = Path(spec["root"])
    preprocess_dataset(root / "raw" / "images", root / "raw" / "masks", root / "prep", num_classes=1, workers=0,
                       progress=False)
    emit({})


def _child_train(spec: dict) -> None:
    import resource

    import torch

    torch.set_num_threads(spec["threads"])
    from biom3d.core import distributed
    from biom3d.core.builder import Builder
    from biom3d.core.builtins.trainer import SegTrainer

    cpu: list[float] = []  # CPU seconds (all threads of this process) of each epoch's training loop
    train_epoch = SegTrainer._train_epoch

    def counted(self, loader):
        before = resource.getrusage(resource.RUSAGE_SELF)
        out = train_epoch(self, loader)
        after = resource.getrusage(resource.RUSAGE_SELF)
        cpu.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
        return out

    SegTrainer._train_epoch = counted

    overrides = {"patch_size": spec["patch"], "aug_patch_size": spec["patch"], "num_pools": spec["pools"],
                 "train.batch_size": spec["batch"],
                 "train.iters_per_epoch": spec["steps"], "train.epochs": spec["epochs"], "train.val_iters": 0,
                 "train.workers": 0, "train.device": spec["device"], "train.fp16": spec["fp16"],
                 "callbacks_replace": True, "callbacks": [{"name": "core/lr-schedule"}, {"name": "core/checkpoint"}]}
    result = Builder(spec["config"], overrides=overrides).train(runs_dir=spec["runs"])
    emit({"rank": distributed.current().rank, "times": [h["time"] for h in result.history], "cpu": cpu})


CHILDREN = {"prep": _child_prep, "train": _child_train}

if __name__ == "__main__":
    main()

"""Training iterations fed by each data pipeline: seconds per iteration, and how long each iteration waits for its
batch, with today's loader (io/patch-dataset: TorchIO on the DataLoader's workers) against the batched augmenter
(io/batch-augment: on CUDA the workers crop and ``on_device`` augments the batch on the GPU; on a CPU its default
there, the workers augment). Issue 15, point 4: the GPU check, in one short run.

    python benchmarks/bench_train_loop.py [--quick] [--device auto] [--patch 64] [--batch 2] [--iters 20]
                                          [--warmup 5] [--workers N]

Each method runs in a fresh subprocess: the paper's network at full width (unet3d-vgg-deep, 32..320, no deep
supervision as the paper stack; --quick: 8..80 at 32^3), dice-ce, the trainer's SGD and its own step
(``SegTrainer._step``: mixed precision on CUDA, clipping at 12), the trainer's DataLoader (``SegTrainer._loader``:
``train.workers`` default workers, persistent, pinned memory on CUDA). Per iteration, after ``--warmup`` ones:

* wait: ``next(loader)``, the time the step waits for the workers' batch;
* on_device: moving the batch to the device and ``on_device`` (the batched augmenter's work there; 0 for TorchIO);
* iteration: all of it, the step included, synchronised on CUDA.

Reported: medians over ``--iters`` iterations, the data's share of the iteration ((wait + on_device) / iteration;
goal on a GPU: under 5%), peak CUDA memory allocated, and the peak PSS of the case's processes. Data: as
bench_augment.py's (4 synthetic z-scored volumes of 128x256x256; --quick: 2 of 48x96x96).
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    THREADS,
    ChildError,
    ChildResult,
    base_parser,
    build_training,
    child_spec,
    emit,
    machine_note,
    median,
    print_table,
    run_child,
)
from bench_augment import FULL, QUICK, _child_data, _data  # noqa: E402

METHODS = {"torchio": "io/patch-dataset", "batched": "io/batch-augment"}


def main() -> None:
    parser = base_parser(__doc__, repeats=20, warmup=5)
    parser.add_argument("--device", default="auto", help="auto (CUDA if available), cpu or cuda")
    parser.add_argument("--patch", type=int, help="patch side (default 64; --quick 32)")
    parser.add_argument("--batch", type=int, default=2, help="batch size (default 2)")
    parser.add_argument("--iters", type=int, help="timed iterations (default --repeats)")
    parser.add_argument("--workers", type=int, help="DataLoader workers (default: train.workers)")
    args = parser.parse_args()
    if args.child:
        CHILDREN[args.child](child_spec(args))
        return
    import torch

    from biom3d.core.config import TrainConfig

    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    size = QUICK if args.quick else FULL
    patch = args.patch or (32 if args.quick else 64)
    width = (8, 80) if args.quick else (32, 320)
    workers = TrainConfig().workers if args.workers is None else args.workers
    iters = args.iters or (3 if args.quick else args.repeats)
    warmup = min(args.warmup, 2) if args.quick else args.warmup
    print(f"{size['n']} volumes of {'x'.join(map(str, size['shape']))}; patch {patch}^3, batch {args.batch}, "
          f"unet3d-vgg-deep {width[0]}..{width[1]}, {workers} workers, device {device}"
          f"{' (mixed precision)' if device.startswith('cuda') else ''}; median of {iters} iterations after "
          f"{warmup}; {machine_note()}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-train-loop-") as tmp:
        data = Path(tmp) / "prep"
        run_child([sys.executable, str(Path(__file__).with_name("bench_augment.py")), "--child", "data", "--spec",
                   json.dumps({"out": str(data), "n": size["n"], "shape": size["shape"]})])
        for method in METHODS:
            spec = {"data": str(data), "patch": patch, "batch": args.batch, "workers": workers, "method": method,
                    "device": device, "iters": iters, "warmup": warmup, "base": width[0], "cap": width[1]}
            try:
                result = run_child([sys.executable, __file__, "--child", "train", "--spec", json.dumps(spec)],
                                   timeout=1800)
            except ChildError as exc:
                print(exc, file=sys.stderr)
                rows.append([method, "failed", "", "", "", "", ""])
                continue
            rows.append(_row(method, result))
    print()
    print_table(["data", "s/iteration", "wait ms", "on_device ms", "data share", "peak CUDA MiB", "PSS MiB"], rows)
    print(f"\nafter: {machine_note()}")


def _row(method: str, result: ChildResult) -> list:
    d = result.data
    share = (d["wait_s"] + d["on_device_s"]) / d["iteration_s"]
    gpu = f"{d['gpu_peak_mib']:.0f}" if d["gpu_peak_mib"] == d["gpu_peak_mib"] else "n/a"
    return [method, f"{d['iteration_s']:.3f}", f"{1000 * d['wait_s']:.1f}", f"{1000 * d['on_device_s']:.1f}",
            f"{share:.1%}", gpu, f"{result.total_mib:.0f}"]


def _child_train(spec: dict) -> None:
    """One method's training iterations, with the trainer's own loader and step."""
    import torch

    from biom3d.core.builtins.trainer import SegTrainer

    torch.set_num_threads(THREADS)
    device = torch.device(spec["device"])
    data = _data(spec, METHODS[spec["method"]], device=device.type)
    model, loss, optimizer, _ = build_training((spec["patch"],) * 3, base=spec["base"], cap=spec["cap"])
    trainer = SegTrainer.__new__(SegTrainer)  # what _loader and _step read, set as fit sets them
    trainer.train_cfg = SimpleNamespace(seed=0, workers=spec["workers"], batch_size=spec["batch"])
    trainer.world = SimpleNamespace(rank=0, distributed=False)
    trainer.batch_size, trainer.device = spec["batch"], device
    trainer.model = trainer.forward = model.to(device)
    trainer.loss = loss.to(device) if isinstance(loss, torch.nn.Module) else loss
    trainer.optimizer = optimizer
    trainer.amp = device.type == "cuda"
    trainer.scaler = torch.amp.GradScaler("cuda", enabled=trainer.amp)
    total = spec["warmup"] + spec["iters"]
    loader = trainer._loader(data.train_dataset(total * spec["batch"]), shuffle=False)
    on_device = getattr(data, "on_device", None)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    model.train()
    waits, moves, iterations = [], [], []
    it = iter(loader)
    for i in range(total):
        start = time.perf_counter()
        batch = next(it)
        fetched = time.perf_counter()
        if on_device is not None:
            with torch.no_grad():
                batch = on_device({k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v
                                   for k, v in batch.items()})
        image = batch["image"].to(device, non_blocking=True)
        target = batch["mask"].to(device, non_blocking=True)
        sync()
        ready = time.perf_counter()
        trainer._step(image, target, 12.0)
        sync()
        if i >= spec["warmup"]:
            waits.append(fetched - start)
            moves.append(ready - fetched)
            iterations.append(time.perf_counter() - start)
    del it
    gpu = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else float("nan")
    emit({"wait_s": median(waits), "on_device_s": median(moves), "iteration_s": median(iterations),
          "gpu_peak_mib": gpu})


CHILDREN = {"data": _child_data, "train": _child_train}


if __name__ == "__main__":
    main()

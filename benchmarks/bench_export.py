"""Predicting from exports: the run folder (PyTorch) vs its TorchScript export vs its ONNX export (ONNX
Runtime), each through the same `biom3d predict` path (`load_model` -> the sliding-window predictor); and what
each `biom3d export` format costs.

    python benchmarks/bench_export.py [--quick] [--repeats 2] [--warmup 1] [--tta]

One synthetic z-scored volume (1, 96, 160, 160), patch 64^3, overlap 0.5, tiles batched by 2 (the CPU default),
TTA off unless --tta (8 flips: 8x the time). Network: unet3d-vgg-deep at full width (32..320, pooling from
auto-configuration for 64^3, no deep supervision), seed 0, in a run folder made here (config, fingerprint,
checkpoint); 2 torch / ONNX Runtime threads. --quick: (1, 48, 80, 80), patch 32^3, widths 8..80.
- export: `biom3d.export.exporter.export(run, [format])` once per format, each in the same child (the first
  call pays the imports); bioimageio traces and exports both graphs again, packs and validates.
- predict: one fresh child per backend: warm-up predictions (TorchScript's profiling executor optimises on
  its first calls), then the median of N; peak RSS of the child; max |p - p_pytorch| of the probabilities.
  `--backend onnxruntime` exports the run's network in memory when it loads (its "load s").

The question it answers (issue 13): is ONNX Runtime faster than PyTorch on this CPU for the default network?
The last row answers it: `--backend onnxruntime` (run folders, CPU) is kept only while it beats PyTorch.
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
    cell,
    child_spec,
    emit,
    machine_note,
    median,
    print_table,
    ratio,
    run_child,
    timed,
)

FULL = {"shape": (96, 160, 160), "patch": 64, "base": 32, "cap": 320}
QUICK = {"shape": (48, 80, 80), "patch": 32, "base": 8, "cap": 80}
BACKENDS = {"pytorch": "run folder (PyTorch eager)", "torchscript": "TorchScript export (.pt)",
            "onnxruntime": "ONNX export (.onnx, ONNX Runtime)",
            "backend": "run folder, --backend onnxruntime"}


def main() -> None:
    parser = base_parser(__doc__, repeats=2)
    parser.add_argument("--tta", action="store_true", help="8-flip test-time augmentation (8x longer)")
    args = parser.parse_args()
    if args.child:
        CHILDREN[args.child](child_spec(args))
        return
    size = QUICK if args.quick else FULL
    print(f"volume (1, {', '.join(map(str, size['shape']))}), patch {size['patch']}^3, widths {size['base']}.."
          f"{size['cap']}, overlap 0.5, {'8 flips' if args.tta else 'no TTA'}, tiles batched by 2; warm-up "
          f"{args.warmup}, median of {args.repeats}; {machine_note()}")
    with tempfile.TemporaryDirectory(prefix="bench-export-") as tmp:
        spec = {**size, "warmup": args.warmup, "repeats": args.repeats, "tmp": tmp, "tta": args.tta}
        exported = _run("export", spec)
        results = {name: _run(name, spec) if isinstance(exported, ChildResult) else "no export"
                   for name in BACKENDS}
        diffs = _differences(Path(tmp), results)
    _report(exported, results, diffs)
    print(f"\nafter: {machine_note()}")


def _run(child: str, spec: dict) -> ChildResult | str:
    try:
        return run_child([sys.executable, __file__, "--child", child, "--spec", json.dumps(spec)])
    except ChildError as exc:
        print(exc, file=sys.stderr)
        return "failed"


# -- children -------------------------------------------------------------------------------------------------------
def _child_export(spec: dict) -> None:
    """A run folder with the network's initial weights, then each format exported (timed) from it."""
    import logging

    import torch

    torch.set_num_threads(THREADS)
    logging.getLogger("biom3d").setLevel(logging.ERROR)
    from biom3d.export.exporter import export

    run_dir = _make_run(Path(spec["tmp"]) / "run", spec)
    seconds = {}
    for fmt in ("torchscript", "onnx", "bioimageio"):
        start = time.perf_counter()
        export(run_dir, [fmt], Path(spec["tmp"]) / "exports")
        seconds[fmt] = time.perf_counter() - start
    sizes = {p.name: p.stat().st_size for p in (Path(spec["tmp"]) / "exports").iterdir()}
    emit({"seconds": seconds, "sizes": sizes, "run": str(run_dir)})


def _make_run(run_dir: Path, spec: dict) -> Path:
    """What `biom3d train` leaves (config, plugins.json, fingerprint, checkpoint), without training."""
    import torch
    from _common import pools_for

    from biom3d.core import runs
    from biom3d.core.builder import Builder
    from biom3d.core.checkpoints import save_checkpoint

    patch = [spec["patch"]] * 3
    config = {"name": "bench", "num_classes": 1, "patch_size": patch, "num_pools": list(pools_for(patch)),
              "spacing": [1.0, 1.0, 1.0],
              "model": {"name": "unet3d-vgg-deep", "params": {"base_features": spec["base"],
                                                              "max_features": spec["cap"], "deep_supervision": False}}}
    builder = Builder(config)
    run_dir.mkdir(parents=True)
    runs.write_run_files(run_dir, builder.config, builder.registry, data_dir=None, folds=None)
    fingerprint = {"version": 1, "num_images": 1, "num_classes": 1, "multilabel": False, "in_channels": 1,
                   "median_shape": list(spec["shape"]), "spacing": [1.0, 1.0, 1.0],
                   "intensity": [{"mean": 0.0, "std": 1.0, "p00_5": -3.0, "p99_5": 3.0}]}
    (run_dir / runs.FINGERPRINT).write_text(json.dumps(fingerprint), encoding="utf-8")
    torch.manual_seed(0)
    save_checkpoint(run_dir / "checkpoints" / "best.pt", {"model": builder.build("model").state_dict(), "epoch": 0})
    return run_dir


def _predict_child(backend: str):
    def child(spec: dict) -> None:
        import logging

        import numpy as np
        import torch

        torch.set_num_threads(THREADS)
        logging.getLogger("biom3d").setLevel(logging.ERROR)
        from _common import normalized_volume

        from biom3d.core.discovery import get_registry
        from biom3d.core.stages.loading import load_model

        tmp = Path(spec["tmp"])
        source = {"pytorch": tmp / "run", "torchscript": tmp / "exports" / "bench.pt",
                  "onnxruntime": tmp / "exports" / "bench.onnx", "backend": tmp / "run"}[backend]
        start = time.perf_counter()
        model = load_model(source, registry=get_registry(), tta=spec["tta"], device="cpu",
                           backend="onnxruntime" if backend == "backend" else "torch")
        load_s = time.perf_counter() - start
        image = normalized_volume(spec["shape"])
        out = {}

        def once() -> None:
            out["probs"] = model.predictor([model.model], image)

        times = timed(once, warmup=spec["warmup"], repeats=spec["repeats"])
        np.save(tmp / f"{backend}.npy", out["probs"].numpy())
        emit({"times": times, "load_s": load_s})

    return child


CHILDREN = {"export": _child_export, **{name: _predict_child(name) for name in BACKENDS}}


def _differences(tmp: Path, results: dict) -> dict[str, float]:
    import numpy as np

    ref_path = tmp / "pytorch.npy"
    if not ref_path.exists():
        return {}
    ref = np.load(ref_path)
    return {name: float(np.abs(np.load(tmp / f"{name}.npy") - ref).max()) for name in BACKENDS
            if (tmp / f"{name}.npy").exists()}


# -- report ---------------------------------------------------------------------------------------------------------
def _report(exported: ChildResult | str, results: dict, diffs: dict[str, float]) -> None:
    base = median(results["pytorch"].data["times"]) if isinstance(results["pytorch"], ChildResult) else None
    rows = []
    for name, label in BACKENDS.items():
        res = results[name]
        if not isinstance(res, ChildResult):
            rows.append([label, cell(res), "", "", "", "", ""])
            continue
        t = median(res.data["times"])
        rows.append([label, t, min(res.data["times"]), ratio(base, t), f"{res.peak_mib:.0f}",
                     f"{res.data['load_s']:.2f}", f"{diffs[name]:.1e}" if name in diffs else "-"])
    print()
    print_table(["predict", "median s", "min s", "speed vs PyTorch", "peak RSS MiB", "load s", "max |p - p_torch|"],
                rows)
    if isinstance(exported, ChildResult):
        sizes = exported.data["sizes"]
        print()
        print_table(["export", "seconds", "file MiB"],
                    [[fmt, s, f"{sizes.get(name, 0) / 2**20:.1f}"] for (fmt, s), name in
                     zip(exported.data["seconds"].items(), ("bench.pt", "bench.onnx", "bench.bioimageio.zip"),
                         strict=True)])
        print("(each export: load the run, run the network to verify, trace/export; bioimageio: both graphs, "
              "package, bioimageio.spec validation; the first pays the imports)")
    else:
        print(f"export: {exported}")
    onnx = results["backend"]
    if isinstance(onnx, ChildResult) and base is not None:
        faster = median(onnx.data["times"]) < base
        print(f"\n--backend onnxruntime vs PyTorch: {ratio(base, median(onnx.data['times']))} "
              f"({'faster: keep it' if faster else 'not faster: drop it'})")


if __name__ == "__main__":
    main()

"""unet3d-vgg-deep against MONAI's DynUNet of the same depth, kernels, strides and filters (CPU, 2 threads).

1. Peak CPU memory of one training step at 128^3 (batch 2): ru_maxrss of a fresh subprocess per model, minus
   its baseline after imports, model and batch creation.
2. Forward + backward time per step, batch 2 x 1 x 64^3, median of N steps after warm-up (the two models take
   turns step by step, so that load from other processes hits both alike), and parameter counts.

Run: ``python benchmarks/bench_models.py [--steps 5] [--skip-memory]``. Plain script, never a CI gate.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

TIME_SIZE, TIME_POOLS = 64, (4, 4, 4)  # auto-configuration's pooling for a 64^3 patch
MEMORY_SIZE, MEMORY_POOLS = 128, (5, 5, 5)  # ... and for the paper's default 128^3 patch
BATCH, NUM_CLASSES, THREADS = 2, 1, 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per model (median reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--skip-memory", action="store_true", help="only the timing part")
    parser.add_argument("--memory-child", choices=["biom3d", "monai"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        print(json.dumps(_memory_child(args.memory_child)))
        return

    # memory first: a child's ru_maxrss starts from its parent's peak (the high-water mark survives
    # fork + exec), so the parent must still be small when it spawns them
    if not args.skip_memory:
        _memory_report()

    import torch

    torch.set_num_threads(THREADS)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU")
    print(f"== time per training step: batch {BATCH} x 1 x {TIME_SIZE}^3, num_pools {TIME_POOLS} ==")
    torch.manual_seed(0)
    models = {which: build(which, TIME_POOLS) for which in ("biom3d", "monai")}
    params = {which: sum(p.numel() for p in m.parameters()) for which, m in models.items()}
    samples = _time_interleaved(models, TIME_SIZE, args.warmup, args.steps)
    times = {which: statistics.median(s) for which, s in samples.items()}
    for which in models:
        print(
            f"{_label(which):34s} median {times[which]:7.3f} s/step (min {min(samples[which]):.3f})   "
            f"{params[which] / 1e6:7.3f} M params"
        )
    print(
        f"ratio unet3d-vgg-deep / DynUNet: time {times['biom3d'] / times['monai']:.3f} (median), "
        f"{min(samples['biom3d']) / min(samples['monai']):.3f} (min); params {params['biom3d'] / params['monai']:.4f}"
    )


def _memory_report() -> None:
    print(f"== peak memory of one training step: batch {BATCH} x 1 x {MEMORY_SIZE}^3, num_pools {MEMORY_POOLS} ==")
    peaks = {}
    for which in ("biom3d", "monai"):
        out = subprocess.run(
            [sys.executable, __file__, "--memory-child", which], capture_output=True, text=True, check=True
        )
        res = json.loads(out.stdout.strip().splitlines()[-1])
        peaks[which] = res["step_mib"]
        print(
            f"{_label(which):34s} step +{res['step_mib']:8.0f} MiB (baseline {res['baseline_mib']:.0f} MiB, "
            f"peak RSS {res['peak_mib']:.0f} MiB, step {res['seconds']:.1f} s)"
        )
    print(f"ratio unet3d-vgg-deep / DynUNet: memory {peaks['biom3d'] / peaks['monai']:.3f}")


def build(which: str, pools: tuple[int, int, int]):
    """Our U-Net, or a DynUNet with the same per-stage kernels, strides and filters."""
    from biom3d.core.context import RunContext
    from biom3d.core.geometry import pool_strides
    from biom3d.models.plugin import UNetParams
    from biom3d.models.unet import build_unet

    ours = build_unet(UNetParams(num_pools=pools), RunContext(num_classes=NUM_CLASSES))
    if which == "biom3d":
        return ours
    from monai.networks.nets import DynUNet

    strides = [(1, 1, 1), *pool_strides(pools)]
    return DynUNet(
        spatial_dims=3,
        in_channels=1,
        out_channels=NUM_CLASSES + 1,
        kernel_size=[3] * len(strides),
        strides=strides,
        upsample_kernel_size=strides[1:],
        filters=ours.encoder.channels,
        norm_name=("INSTANCE", {"affine": True}),
        act_name=("leakyrelu", {"inplace": True, "negative_slope": 0.01}),
    )


def _step(model, x, y) -> None:
    import torch.nn.functional as F

    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()


def _time_interleaved(models: dict, size: int, warmup: int, steps: int) -> dict[str, list[float]]:
    """Seconds per step of each model, the models taking turns step by step so that load drift hits both."""
    import torch

    x = torch.randn(BATCH, 1, size, size, size)
    y = torch.randint(0, NUM_CLASSES + 1, (BATCH, size, size, size))
    samples: dict[str, list[float]] = {which: [] for which in models}
    for i in range(warmup + steps):
        for which, model in models.items():
            model.train()
            start = time.perf_counter()
            _step(model, x, y)
            if i >= warmup:
                samples[which].append(time.perf_counter() - start)
    return samples


def _memory_child(which: str) -> dict[str, float]:
    import torch

    torch.set_num_threads(THREADS)
    model = build(which, MEMORY_POOLS).train()
    x = torch.randn(BATCH, 1, MEMORY_SIZE, MEMORY_SIZE, MEMORY_SIZE)
    y = torch.randint(0, NUM_CLASSES + 1, (BATCH, MEMORY_SIZE, MEMORY_SIZE, MEMORY_SIZE))
    baseline = _maxrss_mib()
    start = time.perf_counter()
    _step(model, x, y)
    seconds = time.perf_counter() - start
    peak = _maxrss_mib()
    return {"baseline_mib": baseline, "peak_mib": peak, "step_mib": peak - baseline, "seconds": seconds}


def _maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _label(which: str) -> str:
    return "biom3d unet3d-vgg-deep" if which == "biom3d" else "MONAI DynUNet (same config)"


if __name__ == "__main__":
    main()

"""The profile behind issue 16's speed fix: one CPU training step of the paper's network, before and after.

    python benchmarks/profile_train_step.py [--patch 96 112 96] [--batch 2] [--top 12]

Runs, each in a fresh process (glibc's allocator settings are process-wide): ``before`` (``nn.InstanceNorm3d``
followed by the in-place LeakyReLU, glibc's default allocator thresholds) and ``after`` (biom3d's
``InstanceNorm3d.norm_act``, then :func:`biom3d.core.devices.keep_freed_memory`). Each does one warm-up step, then
one step under ``torch.profiler`` (CPU, with shapes off) and one plain timed step; it prints the wall time, the
system time and minor page faults of the plain step (``getrusage``), and the top operators by self CPU time
of the profiled one (``aten::copy_`` and ``CopySlices`` are the copies autograd adds for an in-place op on a
view).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import THREADS, build_training, machine_note, measured, random_batch  # noqa: E402

CASES = ("before", "after")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patch", type=int, nargs=3, default=[96, 112, 96])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--case", choices=CASES, help=argparse.SUPPRESS)  # internal: one measured case
    args = parser.parse_args()
    if args.case:
        _case(args)
        return
    print(f"one training step, patch {'x'.join(map(str, args.patch))}, batch {args.batch}, {THREADS} threads; "
          f"{machine_note()}")
    results = {}
    for case in CASES:
        cmd = [sys.executable, __file__, "--case", case, "--patch", *map(str, args.patch), "--batch",
               str(args.batch), "--top", str(args.top)]
        done = subprocess.run(cmd, capture_output=True, text=True, encoding="utf-8", errors="replace", check=False)
        if done.returncode != 0:
            print(f"{case}: failed\n{done.stderr[-3000:]}")
            continue
        lines = done.stdout.splitlines()
        results[case] = json.loads(next(line for line in lines if line.startswith("{")))
        print(f"\n== {case} ==")
        print("\n".join(line for line in lines if not line.startswith("{")))
    if len(results) == 2:
        b, a = results["before"], results["after"]
        print(f"\nafter / before: wall {a['wall'] / b['wall']:.2f}x, system {a['sys'] / max(b['sys'], 1e-9):.2f}x, "
              f"minor faults {a['minflt'] / max(b['minflt'], 1):.2f}x")


def _case(args) -> None:
    import torch
    from torch import nn

    from biom3d.core.devices import keep_freed_memory
    from biom3d.models.blocks import InstanceNorm3d

    torch.set_num_threads(THREADS)
    model, loss_fn, optimizer, _ = build_training(tuple(args.patch))
    if args.case == "before":
        for module in list(model.modules()):
            for name, child in list(module.named_children()):
                if isinstance(child, InstanceNorm3d):
                    stock = nn.InstanceNorm3d(child.num_features, affine=True)
                    stock.load_state_dict(child.state_dict())
                    setattr(module, name, stock)
    else:
        keep_freed_memory()
    batch = random_batch(tuple(args.patch), args.batch, seed=0)
    model.train()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(batch["image"]), batch["mask"])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 12.0)
        optimizer.step()

    step()  # warm-up: first-touch of the weights, oneDNN primitive caches
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        step()
    plain = measured(step)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.top))
    print(f"plain step: wall {plain['wall']:.1f} s, user {plain['user']:.1f} s, system {plain['sys']:.1f} s, "
          f"minor faults {plain['minflt'] / 1e6:.2f} M")
    print(json.dumps(plain))


if __name__ == "__main__":
    main()

"""Training steps of the ORIGINAL biom3d 0.1.2 as its ``seg_train`` runs them on a CPU (no autocast, no
GradScaler there): its ``UNet3DVGGDeep`` (``biom3d.models.unet3d_vgg_deep.UNet``, widths 32..320), its default
training loss ``DiceCEnnUNet`` (``DC_and_CE_loss``: batch soft Dice without background + cross-entropy), its
SGD (Nesterov, momentum 0.99, lr 0.01, weight decay 3e-5), gradient clipping at 12; on pre-made batches (no
data loader). Run by the original's python from ``benchmarks/bench_train_step.py``.

    <orig-python> benchmarks/orig/train_step.py --patch 96 112 96 --pools 4 4 4 [--batch 2] [--deep]
        [--warmup 1] [--repeats 5] [--serve]

``--deep``: its deep supervision (``USE_DEEP_SUPERVISION``, off in its default config): side heads upsampled
to full resolution, the loss wrapped in its ``DeepMetric`` with its nnU-Net-style halving weights.
Prints one JSON line (``BENCH_RESULT {...}``): per step wall, user and system seconds, minor page faults.
``--serve``: one step per ``step`` line on stdin instead (``_common.StepWorker``), so that the driver can
alternate steps of ours and of the original.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import THREADS, emit, measured, random_batch, serve_steps  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--patch", type=int, nargs=3, required=True)
    parser.add_argument("--pools", type=int, nargs=3, required=True)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--deep", action="store_true", help="its deep supervision (off in its default config)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--serve", action="store_true", help="steps on request from stdin (StepWorker)")
    args = parser.parse_args()

    import torch

    from biom3d.metrics import DC_and_CE_loss, DeepMetric
    from biom3d.models.unet3d_vgg_deep import UNet

    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    # its config: num_classes = NUM_CLASSES + 1 with USE_SOFTMAX (one foreground class here, as ours)
    model = UNet(num_pools=args.pools, num_classes=2, factor=32, use_deep=args.deep, in_planes=1)
    loss_kwargs = {"soft_dice_kwargs": {"batch_dice": True, "smooth": 1e-5, "do_bg": False}, "ce_kwargs": {}}
    if args.deep:
        heads = len(model.decoder.layers) - 2  # side heads from the third decoder stage on, then the final one
        alphas = [0.5 ** (heads - i) for i in range(heads)] + [1.0]
        loss_fn = DeepMetric(DC_and_CE_loss, alphas=alphas, metric_kwargs=loss_kwargs)
    else:
        loss_fn = DC_and_CE_loss(**loss_kwargs)
    optimizer = torch.optim.SGD(
        [{"params": model.parameters()}, {"params": loss_fn.parameters()}],
        lr=1e-2, momentum=0.99, nesterov=True, weight_decay=3e-5,
    )
    # its dataset yields float masks (B, 1, D, H, W) of labels under softmax
    batches = [random_batch(tuple(args.patch), args.batch, seed=i) for i in range(2)]
    batches = [(b["image"], b["mask"][:, None].float()) for b in batches]
    model.train()
    losses = []

    def step(x, y) -> None:  # the CPU branch of its seg_train, metrics aside
        pred = model(x)
        loss = loss_fn(pred, y)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 12)
        optimizer.step()
        losses.append(float(loss.detach()))

    params = sum(p.numel() for p in model.parameters())
    if args.serve:
        serve_steps(lambda: step(*batches[len(losses) % 2]), lambda: {"losses": losses, "params": params})
        return
    steps = [measured(lambda i=i: step(*batches[i % 2])) for i in range(args.warmup + args.repeats)]
    emit({"steps": steps[args.warmup:], "warmup": steps[:args.warmup], "losses": losses, "params": params})


if __name__ == "__main__":
    main()

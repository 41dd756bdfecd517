"""Times the ORIGINAL biom3d 0.1.2 predictor (``seg_predict_patch_2``, registered as SegPatch: TorchIO
GridSampler + GridAggregator with Hann blending, 8-flip test-time augmentation averaging logits) on a synthetic
volume, with the original's own UNet3DVGGDeep (``biom3d.models.unet3d_vgg_deep.UNet``, no deep supervision as in
its default config) built with a fixed seed; run by the original's python from ``benchmarks/bench_predict.py``.

    <orig-python> benchmarks/orig/predict.py --shape 96 160 160 --patch 64 64 64 --pools 4 4 4 --factor 8
        [--workers 4] [--warmup 1] [--repeats 3]

Our weights cannot be loaded: the state_dict keys differ and the original's convolutions have no bias. The time
includes the final softmax over the aggregated logits. Prints one JSON line (``BENCH_RESULT {...}``).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import THREADS, emit, normalized_volume, timed  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shape", type=int, nargs=3, required=True)
    parser.add_argument("--patch", type=int, nargs=3, required=True)
    parser.add_argument("--pools", type=int, nargs=3, required=True)
    parser.add_argument("--factor", type=int, default=8, help="width of the first stage (ours: base_features)")
    parser.add_argument("--workers", type=int, default=4, help="its patch loader's workers (its default: 4)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-tta", action="store_true", help="its predictor without flip TTA")
    args = parser.parse_args()

    import torch

    from biom3d.models.unet3d_vgg_deep import UNet
    from biom3d.predictors import seg_predict_patch_2

    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    model = UNet(num_pools=args.pools, num_classes=2, factor=args.factor, use_deep=False, in_planes=1).eval()
    image = normalized_volume(args.shape)
    out = {}

    def once() -> None:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):  # prints, tqdm
            logit = seg_predict_patch_2(image, tuple(args.shape), model, args.patch, tta=not args.no_tta,
                                        num_workers=args.workers)
        out["probs"] = torch.softmax(logit, dim=0)

    times = timed(once, warmup=args.warmup, repeats=args.repeats)
    emit({"times": times, "shape": list(out["probs"].shape),
          "params": sum(p.numel() for p in model.parameters())})


if __name__ == "__main__":
    main()

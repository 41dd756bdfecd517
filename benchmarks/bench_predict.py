"""Sliding-window prediction with 8-flip test-time augmentation: our `SlidingWindowPredictor` against MONAI's
`sliding_window_inference` and the original biom3d 0.1.2 predictor, plus an accuracy check of ours against a
plain reference Hann blend written here.

    python benchmarks/bench_predict.py [--quick] [--repeats 3] [--warmup 1] [--orig-python PATH] [--orig-workers 4]
    python benchmarks/bench_predict.py --full-width [--no-tta] [--repeats 1]   # issue 15: ours vs the compute floor
    python benchmarks/bench_predict.py --fast-run DEMO/run --fast-image IMG --fast-mask MASK   # fast mode: time, Dice

One synthetic z-scored volume (1, 96, 160, 160), patch 64^3, overlap 0.5, TTA on (identity + 7 flips), tiles
batched by 2 (--quick: (1, 48, 80, 80), patch 32^3). Network: unet3d-vgg-deep with small widths (8..80, pooling
from auto-configuration), seed 0, eval mode, 2 torch threads.
- ours: `SlidingWindowPredictor(patch, overlap=0.5, tta=True, batch_size=2)` -> softmax probabilities.
- MONAI: for each flip, flip the input, `sliding_window_inference(sw_batch_size=2, overlap=0.5)` with our
  `hann_window` as `roi_weight_map` on softmax outputs, flip back; average the 8 -> same maths as ours.
- original: `biom3d.predictors.seg_predict_patch_2` (TorchIO GridSampler/GridAggregator, Hann, TTA averaging
  logits, its loader's default 4 workers) then softmax, with the original's own UNet3DVGGDeep of the same depth and
  widths (seed 0): our weights cannot be loaded (other state_dict keys, no conv biases there).
- reference: loops over tiles and flips, batch 1: run, unflip, softmax, times the same window as `hann_window`,
  accumulate, divide by the summed windows. Max |ours - reference| must be <= 1e-4 (also shown for MONAI).
Each timed case runs in a fresh subprocess: warm-up then the median of N; peak RSS of its largest process. Our
children (ours, MONAI, the floor) set glibc to keep freed blocks, as our predictor does on a CPU, so that MONAI
and the floor do not pay page faults ours does not; the original runs with its own (glibc's default) settings.

Bars (issue: Predictor): ours <= MONAI's time; ours >= 3x faster than the original; max |ours - ref| <= 1e-4.

--full-width (issue 15): the paper's widths (32..320) instead, where the network, not the tiling, is the cost;
--no-tta turns TTA off in every case (the original's too). Adds the compute floor: the number of forwards the
window needs (tiles x flips) times the best per-patch time of one forward of 1, 2 or 4 patches in either memory
layout (NCDHW, NDHWC), measured in one child (warm-up forwards first). Bar: ours <= 1.05x the floor, with and
without TTA. The reference blend check is skipped there (the same code is checked at the narrow widths; at full width it would cost another
whole prediction at batch 1).

--fast-run RUN (issue 15): `predictor.params.fast` against the run's own predictor settings on one held-out image
(`biom3d demo`'s quadrant: DEMO/data/test/images/q3.tif and its mask), through the predict stage's own steps
(load_run as `biom3d predict --fast` calls it, predict_image, the run's post-processing), in this process,
alternating which goes first; Dice of each against the mask. Bar: fast >= 2x faster at a Dice within 0.005 of the default.
"""

from __future__ import annotations

import json
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
    base_parser,
    cell,
    child_spec,
    emit,
    machine_note,
    median,
    orig_available,
    print_orig_note,
    print_table,
    ratio,
    run_child,
    timed,
)

FULL = {"shape": (96, 160, 160), "patch": 64}
QUICK = {"shape": (48, 80, 80), "patch": 32}
OVERLAP, BATCH, BASE, CAP = 0.5, 2, 8, 80
FULL_WIDTH = {"base": 32, "cap": 320}
FLOOR_BATCHES = (1, 2, 4)
TOLERANCE = 1e-4
FLOOR_BAR = 1.05


def main() -> None:
    parser = base_parser(__doc__, repeats=3)
    parser.add_argument("--orig-workers", type=int, default=4, help="the original predictor's loader workers")
    parser.add_argument("--full-width", action="store_true", help="widths 32..320 (the paper's), and the floor")
    parser.add_argument("--no-tta", action="store_true", help="no flip TTA in any case")
    parser.add_argument("--fast-run", type=Path, help="a trained run folder: measure the fast mode on it")
    parser.add_argument("--fast-image", type=Path, help="--fast-run: the held-out image")
    parser.add_argument("--fast-mask", type=Path, help="--fast-run: its ground-truth mask")
    args = parser.parse_args()
    if args.child:
        CHILDREN[args.child](child_spec(args))
        return
    if args.fast_run:
        fast_mode(args.fast_run, args.fast_image, args.fast_mask, repeats=max(2, args.repeats))
        return
    size = QUICK if args.quick else FULL
    widths = FULL_WIDTH if args.full_width else {"base": BASE, "cap": CAP}
    tta = not args.no_tta
    print(f"volume (1, {', '.join(map(str, size['shape']))}), patch {size['patch']}^3, overlap {OVERLAP}, "
          f"{'8 flips' if tta else 'no TTA'}, widths {widths['base']}..{widths['cap']}, tiles batched by {BATCH}; "
          f"warm-up {args.warmup}, median of {args.repeats}; {machine_note()}")
    with tempfile.TemporaryDirectory(prefix="bench-predict-") as tmp:
        spec = {**size, **widths, "tta": tta, "warmup": args.warmup, "repeats": args.repeats, "tmp": tmp}
        results = {"ours": _run("ours", spec), "monai": _run("monai", spec)}
        results["original"] = _original(args, {**size, **widths, "tta": tta}, results["ours"])
        floor = _run("floor", spec) if args.full_width else None
        check = "skipped (--full-width)" if args.full_width else _run("check", spec)
    _report(results, check)
    if floor is not None:
        _report_floor(results["ours"], floor)


def _run(child: str, spec: dict) -> ChildResult | str:
    try:
        return run_child([sys.executable, __file__, "--child", child, "--spec", json.dumps(spec)])
    except ChildError as exc:
        print(exc, file=sys.stderr)
        return "failed"


def _original(args, size: dict, ours: ChildResult | str) -> ChildResult | str:
    if not orig_available(args.orig_python):
        return ORIG_MISSING
    pools = ours.data["pools"] if isinstance(ours, ChildResult) else [max(0, size["patch"].bit_length() - 3)] * 3
    cmd = [args.orig_python, str(ORIG_DIR / "predict.py"), "--shape", *map(str, size["shape"]),
           "--patch", *[str(size["patch"])] * 3, "--pools", *map(str, pools), "--factor", str(size["base"]),
           "--workers", str(args.orig_workers), "--warmup", str(args.warmup), "--repeats", str(args.repeats)]
    if not size["tta"]:
        cmd.append("--no-tta")
    try:
        return run_child(cmd, orig=True)
    except ChildError as exc:
        print(exc, file=sys.stderr)
        return "failed"


# -- children -------------------------------------------------------------------------------------------------------
def _setup(spec: dict):
    """The network (eval mode, seed 0) and the volume, identical in every child, and glibc set to keep freed
    blocks as our predictor does on a CPU (else MONAI and the floor would pay page faults ours does not)."""
    import torch
    from _common import build_model, normalized_volume

    from biom3d.core.devices import keep_freed_memory

    keep_freed_memory()
    torch.set_num_threads(THREADS)
    patch = (spec["patch"],) * 3
    model, ctx = build_model(patch, base=spec.get("base", BASE), cap=spec.get("cap", CAP), deep=False)
    return model.eval(), torch.from_numpy(normalized_volume(spec["shape"])), patch, ctx


def _child_ours(spec: dict) -> None:
    from biom3d.core.builtins.predictor import SlidingWindowPredictor

    model, image, patch, ctx = _setup(spec)
    predictor = SlidingWindowPredictor(patch, overlap=OVERLAP, tta=spec.get("tta", True), batch_size=BATCH)
    out = {}

    def once() -> None:
        out["probs"] = predictor([model], image)

    times = timed(once, warmup=spec["warmup"], repeats=spec["repeats"])
    _save(spec, "ours", out["probs"])
    emit({"times": times, "pools": list(ctx.num_pools), "params": sum(p.numel() for p in model.parameters())})


def _child_floor(spec: dict) -> None:
    """What the window's forwards cost alone: (tiles x flips) x the best per-patch time of one forward, over
    batch sizes and both memory layouts (NCDHW, NDHWC)."""
    import torch

    from biom3d.core.builtins.predictor import FLIPS, tile_starts

    model, image, patch, _ = _setup(spec)
    forwards = len(tile_starts(tuple(image.shape[1:]), patch, OVERLAP)) * (len(FLIPS) if spec.get("tta", True) else 1)
    per_patch = {}
    with torch.inference_mode():
        for layout, fmt in (("NCDHW", torch.contiguous_format), ("NDHWC", torch.channels_last_3d)):
            model.to(memory_format=fmt)
            for b in FLOOR_BATCHES:
                x = image[None, :, : patch[0], : patch[1], : patch[2]].repeat(b, 1, 1, 1, 1).contiguous(memory_format=fmt)
                times = timed(lambda x=x: model(x), warmup=1, repeats=max(2, spec["repeats"]))
                per_patch[f"{layout} batch {b}"] = median(times) / b
    best = min(per_patch, key=per_patch.get)
    emit({"forwards": forwards, "per_patch": per_patch, "best": best, "floor": forwards * per_patch[best]})


def _child_monai(spec: dict) -> None:
    import torch
    from monai.inferers import sliding_window_inference

    from biom3d.core.builtins.predictor import FLIPS, hann_window

    model, image, patch, _ = _setup(spec)
    window = hann_window(patch)

    def softmax_model(x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(model(x), dim=1)

    out = {}

    @torch.inference_mode()
    def once() -> None:
        total = None
        for flip in FLIPS if spec.get("tta", True) else ((),):
            dims = [d + 2 for d in flip]
            x = image[None].flip(dims) if dims else image[None]
            probs = sliding_window_inference(x, patch, BATCH, softmax_model, overlap=OVERLAP, roi_weight_map=window)
            probs = probs.flip(dims) if dims else probs
            total = probs if total is None else total.add_(probs)
        out["probs"] = total[0] / (len(FLIPS) if spec.get("tta", True) else 1)

    times = timed(once, warmup=spec["warmup"], repeats=spec["repeats"])
    _save(spec, "monai", out["probs"])
    emit({"times": times})


def _child_check(spec: dict) -> None:
    """The plain reference blend, compared with the outputs the ours and MONAI children saved."""
    import numpy as np

    model, image, patch, _ = _setup(spec)
    start = time.perf_counter()
    ref = reference_blend(model, image, patch, OVERLAP).numpy()
    seconds = time.perf_counter() - start
    diffs = {}
    for name in ("ours", "monai"):
        path = Path(spec["tmp"]) / f"{name}.npy"
        if path.exists():
            diffs[name] = float(np.abs(np.load(path) - ref).max())
    emit({"seconds": seconds, "max_abs_diff": diffs})


CHILDREN = {"ours": _child_ours, "monai": _child_monai, "check": _child_check, "floor": _child_floor}


def reference_blend(model, image, patch: tuple[int, ...], overlap: float):
    """Straightforward Hann-weighted sliding window with 8-flip TTA: one tile and one flip at a time."""
    import torch

    from biom3d.core.builtins.predictor import FLIPS, hann_window

    window = hann_window(patch)
    shape = image.shape[1:]
    starts = [_starts(size, p, overlap) for size, p in zip(shape, patch, strict=True)]
    acc, weight = None, torch.zeros(shape)
    with torch.inference_mode():
        for z in starts[0]:
            for y in starts[1]:
                for x in starts[2]:
                    box = (slice(z, z + patch[0]), slice(y, y + patch[1]), slice(x, x + patch[2]))
                    tile = image[(slice(None), *box)][None]
                    probs = 0
                    for flip in FLIPS:
                        dims = [d + 2 for d in flip]
                        logits = model(tile.flip(dims)).flip(dims) if dims else model(tile)
                        probs = probs + torch.softmax(logits, dim=1)[0]
                    probs = probs / len(FLIPS)
                    if acc is None:
                        acc = torch.zeros((probs.shape[0], *shape))
                    acc[(slice(None), *box)] += probs * window
                    weight[box] += window
    return acc / weight


def _starts(size: int, p: int, overlap: float) -> list[int]:
    """Tiles every ``p * (1 - overlap)`` voxels, the last one flush with the end (sizes here fall on that grid)."""
    if size < p:
        raise ValueError(f"the reference needs a volume at least as large as the patch ({size} < {p})")
    step = max(1, round(p * (1 - overlap)))
    starts = list(range(0, size - p + 1, step))
    return starts if starts[-1] == size - p else [*starts, size - p]


def _save(spec: dict, name: str, probs) -> None:
    import numpy as np

    np.save(Path(spec["tmp"]) / f"{name}.npy", probs.numpy())


# -- report ---------------------------------------------------------------------------------------------------------
def _report(results: dict[str, ChildResult | str], check: ChildResult | str) -> None:
    time_of = {k: median(r.data["times"]) for k, r in results.items() if isinstance(r, ChildResult)}
    diffs = check.data["max_abs_diff"] if isinstance(check, ChildResult) else {}
    labels = {"ours": "biom3d SlidingWindowPredictor", "monai": "MONAI sliding_window_inference x 8 flips",
              "original": "original 0.1.2 seg_predict_patch_2 (own net)"}
    rows = []
    for name, res in results.items():
        if not isinstance(res, ChildResult):
            rows.append([labels[name], cell(res), "", "", "", "", ""])
            continue
        diff = diffs.get(name)
        rows.append([labels[name], time_of[name], min(res.data["times"]), ratio(time_of[name], time_of.get("ours")),
                     f"{res.peak_mib:.0f}", f"{diff:.2e}" if diff is not None else "-", res.data.get("params", "")])
    print()
    print_table(["case", "median s", "min s", "time / ours", "peak RSS MiB", "max |p - ref|", "params"], rows)
    print_orig_note(*results.values())
    print()
    print(f"ours vs MONAI: {ratio(time_of.get('monai'), time_of.get('ours'))} faster (goal >= 1.00x)")
    print(f"ours vs original: {ratio(time_of.get('original'), time_of.get('ours'))} faster (goal >= 3.00x)")
    ours_diff = diffs.get("ours")
    verdict = "n/a" if ours_diff is None else ("OK" if ours_diff <= TOLERANCE else "FAIL")
    if isinstance(check, str):
        print(f"reference check: {check}")
        return
    print(f"max |ours - reference| = {ours_diff if ours_diff is not None else 'n/a'} (tolerance {TOLERANCE}): "
          f"{verdict}" + (f"; reference blend took {check.data['seconds']:.1f} s" if isinstance(check, ChildResult)
                          else f"; check {check}"))



def fast_mode(run_dir: Path, image_path: Path, mask_path: Path, *, repeats: int) -> None:
    """The run's predictor against the same with ``fast: true``: seconds per image and Dice on one held-out image."""
    import numpy as np
    import torch

    from biom3d.core.discovery import get_registry
    from biom3d.core.stages.evaluate import scores
    from biom3d.core.stages.loading import load_run
    from biom3d.core.stages.predict import predict_image

    torch.set_num_threads(THREADS)
    registry = get_registry()
    run = load_run(run_dir, registry=registry, device="cpu")
    cases = {"default": run, "fast": load_run(run_dir, registry=registry, device="cpu", fast=True)}  # = --fast
    image = registry.reader_for(image_path).build({}, run.context)(image_path)
    truth = np.asarray(registry.reader_for(mask_path).build({}, run.context)(mask_path).array)
    times, dice = {k: [] for k in cases}, {}
    for i in range(repeats):
        for name in (list(cases) if i % 2 == 0 else list(cases)[::-1]):
            start = time.perf_counter()
            mask = predict_image([cases[name]], image)
            for step in run.postprocessors:
                mask = step(mask)
            times[name].append(time.perf_counter() - start)
            dice[name] = scores(np.asarray(mask).squeeze() > 0, truth.squeeze() > 0)["dice"]
    p = {k: c.predictor for k, c in cases.items()}
    print(f"{run_dir} on {image_path.name} {tuple(np.shape(image.array))}; median of {repeats}; {machine_note()}")
    rows = [[name, f"{tuple(p[name].patch)}{' grown x2' if p[name].grow_stride else ''}", p[name].overlap,
             p[name].tta, median(times[name]), f"{dice[name]:.4f}"] for name in cases]
    print_table(["predictor", "tile", "overlap", "tta", "median s", "Dice"], rows)
    speed = median(times["default"]) / median(times["fast"])
    delta = dice["default"] - dice["fast"]
    print(f"fast: {speed:.2f}x faster (bar >= 2x), Dice {delta:+.4f} below the default (bar <= 0.005): "
          f"{'OK' if speed >= 2 and delta <= 0.005 else 'MISSED'}")


def _report_floor(ours: ChildResult | str, floor: ChildResult | str) -> None:
    if not isinstance(ours, ChildResult) or not isinstance(floor, ChildResult):
        print(f"floor: ours {cell(ours) if isinstance(ours, str) else 'ok'}, floor {cell(floor) if isinstance(floor, str) else 'ok'}")
        return
    f = floor.data
    per = ", ".join(f"{case}: {t:.3f} s" for case, t in f["per_patch"].items())
    print(f"compute floor: {f['forwards']} forwards x {f['per_patch'][f['best']]:.3f} s (best per patch, "
          f"{f['best']}; {per}) = {f['floor']:.1f} s")
    verdict = median(ours.data["times"]) / f["floor"]
    print(f"ours / floor: {verdict:.3f}x (bar <= {FLOOR_BAR:.2f}x): {'OK' if verdict <= FLOOR_BAR else 'ABOVE'}")


if __name__ == "__main__":
    main()

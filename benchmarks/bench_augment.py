"""Augmented training samples per second: today's loader (io/patch-dataset, TorchIO on the DataLoader's workers)
against the batched augmenter (io/batch-augment: whole batches augmented in a few tensor ops), on the CPU (in the
loader's workers, its default there, and in the main process) and, when there is one, on CUDA.

    python benchmarks/bench_augment.py [--quick] [--repeats 3] [--warmup 2] [--workers N] [--libraries]
                                       [--patches 64 128] [--batches 2 8]

Data: 4 synthetic z-scored volumes of 128x256x256 with blob masks, written as a preprocessed folder (--quick: 2 of
48x96x96). Patches 64^3 and 128^3 (--quick: 32^3 and 48^3), batches 2 and 8, every augmentation at its default
probability and range (the same for both). Each case is a fresh subprocess with a DataLoader set up as the
trainer's (``train.workers`` default workers, persistent, pinned memory on CUDA): ``--warmup`` batches, at least 16
samples and the loader's in-flight batches (the workers' start, and their first touches of the memory-mapped
volumes' pages, which cost an enlarged crop several times its copy), then the median samples/s over ``--repeats``
windows of at least 16 samples, 3 times the in-flight batches (2 per worker) and 3 seconds.

* torchio: the DataLoader of io/patch-dataset's training dataset; a batch counts when the loader yields it.
* batched workers: io/batch-augment with ``run_on: workers`` (``auto`` on a CPU with workers): each worker crops,
  collates and augments its batch; ``on_device`` only makes its labels int64.
* batched main: ``run_on: device`` on the CPU: the workers crop, ``on_device`` augments in the main process (one
  thread), as on a GPU.
* batched cuda: the same with the batch moved to the GPU first (``non_blocking``) and the window synchronised.

CPU ms/sample: user + system CPU time of the main process and its workers over the timed windows, per sample: what
a sample costs the machine, whatever share of it the case got, so its ratio moves less than the samples/s when
other processes load the machine (see the load averages printed; on this 2-core machine the workers and the main
process share the same cores too). Memory (second table): peak PSS summed over the case's processes (workers
included, shared pages once), the main process's own peak RSS, and on CUDA the peak allocated GPU memory.

``--libraries`` adds, at the first patch size and batch 2, what the libraries we looked at cost for the same work
(per sample: kornia's 3D augmentations cannot carry 3D masks, MONAI's transforms take one sample at a time):
MONAI's closest dictionary pipeline, looped over the batch's crops, and kornia's RandomAffine3D (if importable).

Goal (issue 15, on this CPU): batched (its CPU default, in the workers) >= 4x torchio at 64^3 and >= 2x at
128^3. As TorchIO's, the batched side's workers crop the enlarged box (5.3x the patch's voxels at 64^3) only for
the samples they draw a rotation for (p_rotate): shipping it for every sample through the workers' shared memory
was most of its CPU time.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import resource
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
    normalized_volume,
    print_table,
    ratio,
    run_child,
    synthetic_case,
)

FULL = {"n": 4, "shape": (128, 256, 256), "patches": (64, 128)}
QUICK = {"n": 2, "shape": (48, 96, 96), "patches": (32, 48)}
BATCHES = (2, 8)
MIN_SAMPLES = 16  # per timed window
MIN_SECONDS = 3.0  # per timed window too: a window of 16 fast samples (0.1 s) measured the machine's moods
WARM_SAMPLES = 16  # at least, before timing: the workers start and map most of the memory-mapped volumes' pages
METHODS = ("torchio", "workers", "main", "cuda")
#: io/batch-augment's run_on per method
RUN_ON = {"workers": "workers", "main": "device", "cuda": "device"}


def main() -> None:
    parser = base_parser(__doc__, repeats=3, warmup=2)
    parser.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: train.workers)")
    parser.add_argument("--libraries", action="store_true", help="also time MONAI's and kornia's per-sample transforms")
    parser.add_argument("--patches", type=int, nargs="+", help="patch sides (default: 64 128; --quick: 32 48)")
    parser.add_argument("--batches", type=int, nargs="+", default=list(BATCHES), help="batch sizes (default: 2 8)")
    args = parser.parse_args()
    if args.child:
        CHILDREN[args.child](child_spec(args))
        return
    size = QUICK if args.quick else FULL
    workers = args.workers if args.workers is not None else _default_workers()
    cuda = _cuda_available()
    print(f"{size['n']} volumes of {'x'.join(map(str, size['shape']))}, {workers} workers, >= {args.warmup} warm-up "
          f"batches (>= {WARM_SAMPLES} samples, >= the loader's in-flight batches), median of {args.repeats} windows of "
          f">= {MIN_SAMPLES} samples (>= 3x the in-flight batches) and >= {MIN_SECONDS:g} s; "
          f"CUDA: {cuda}; {machine_note()}")
    speed, memory = [], []
    with tempfile.TemporaryDirectory(prefix="bench-augment-") as tmp:
        data = Path(tmp) / "prep"
        run_child([sys.executable, __file__, "--child", "data", "--spec",
                   json.dumps({"out": str(data), "n": size["n"], "shape": size["shape"]})])
        patches = args.patches or size["patches"]
        for patch in patches:
            for batch in args.batches:
                results = {}
                for method in METHODS:
                    if method == "cuda" and not cuda:
                        results[method] = "n/a (no CUDA)"
                        continue
                    spec = {"data": str(data), "patch": patch, "batch": batch, "workers": workers, "method": method,
                            "warmup": args.warmup, "windows": args.repeats}
                    results[method] = _measure([sys.executable, __file__, "--child", "loader", "--spec",
                                                json.dumps(spec)])
                speed.append(_speed_row(patch, batch, results))
                memory.append(_memory_row(patch, batch, results))
        print()
        print_table(["patch", "batch", "torchio samples/s", "batched workers", "batched main", "batched cuda",
                     "workers / torchio", "main / torchio", "cuda / torchio", "CPU ms/sample: torchio", "workers",
                     "main", "cuda", "torchio / workers (CPU time)"], speed)
        print()
        print_table(["patch", "batch", "PSS MiB: torchio", "workers", "main", "cuda", "main RSS MiB: torchio",
                     "workers", "main", "cuda", "cuda peak GPU MiB"], memory)
        if args.libraries:
            _libraries(data, patches[0], args)
    print(f"\nafter: {machine_note()}")


def _default_workers() -> int:
    from biom3d.core.config import TrainConfig

    return TrainConfig().workers


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _measure(cmd: list[str]) -> ChildResult | str:
    try:
        return run_child(cmd, timeout=600)
    except ChildError as exc:
        print(exc, file=sys.stderr)
        return "failed"


def _figure(results: dict, method: str, key: str) -> float | None:
    r = results[method]
    return median(r.data[key]) if isinstance(r, ChildResult) else None


def _speed_row(patch: int, batch: int, results: dict) -> list:
    rate = {m: _figure(results, m, "rates") for m in METHODS}
    cpu = {m: _figure(results, m, "cpu_ms") for m in METHODS}

    def show(figures: dict, method: str):
        return figures[method] if figures[method] is not None else (results[method] if figures is rate else "")

    return [f"{patch}^3", batch, *(show(rate, m) for m in METHODS),
            *(ratio(rate[m], rate["torchio"]) for m in METHODS[1:]), *(show(cpu, m) for m in METHODS),
            ratio(cpu["torchio"], cpu["workers"])]


def _memory_row(patch: int, batch: int, results: dict) -> list:
    def mem(method: str, key: str) -> str:
        r = results[method]
        if not isinstance(r, ChildResult):
            return ""
        return f"{r.total_mib:.0f}" if key == "pss" else f"{r.data.get(key, float('nan')):.0f}"

    return [f"{patch}^3", batch, *(mem(m, "pss") for m in METHODS), *(mem(m, "self_peak_mib") for m in METHODS),
            mem("cuda", "gpu_peak_mib")]


def _libraries(data: Path, patch: int, args) -> None:
    res = _measure([sys.executable, __file__, "--child", "libraries", "--spec",
                    json.dumps({"data": str(data), "patch": patch, "batch": 2, "repeats": args.repeats})])
    print(f"\nlibraries at {patch}^3, batch 2, one CPU thread, per sample (the batched augmenter's on_device alone "
          "for reference):")
    if isinstance(res, ChildResult):
        print_table(["pipeline", "ms/sample"], [[k, v] for k, v in res.data["ms_per_sample"].items()])
    else:
        print(res)


# -- children -------------------------------------------------------------------------------------------------------
def _child_data(spec: dict) -> None:
    """A preprocessed folder as `biom3d preprocess` writes it: images, masks, foreground locations, folds."""
    import numpy as np

    from biom3d.core.folds import write_folds

    out, shape = Path(spec["out"]), tuple(spec["shape"])
    for sub in ("images", "masks", "fg"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    folds = {}
    for i in range(spec["n"]):
        name = f"case{i:03d}"
        mask = synthetic_case(shape, i)[1]
        np.save(out / "images" / f"{name}.npy", normalized_volume(shape, i))
        np.save(out / "masks" / f"{name}.npy", mask)
        np.savez(out / "fg" / f"{name}.npz", **{"1": np.argwhere(mask == 1).astype(np.int32)})
        folds[f"{name}.npy"] = 0 if i == 0 else 1
    write_folds(out / "folds.csv", folds)
    emit({})


def _data(spec: dict, name: str, params: dict | None = None, device: str = "cpu"):
    from biom3d.core.context import RunContext
    from biom3d.core.discovery import get_registry
    from biom3d.core.geometry import aug_patch_size

    patch, data = (spec["patch"],) * 3, Path(spec["data"])
    ctx = RunContext(num_classes=1, patch_size=patch, aug_patch_size=aug_patch_size(patch), data_dir=data,
                     folds_path=data / "folds.csv", fold=0, seed=0, batch_size=spec["batch"], device=device,
                     workers=spec.get("workers", 0))
    return get_registry().resolve("dataset", name).build(params or {}, ctx)


def _child_loader(spec: dict) -> None:
    """Samples/s of one method: the trainer's DataLoader over the dataset, plus on_device for the batched ones."""
    import torch

    from biom3d.core.devices import keep_freed_memory

    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    method, batch = spec["method"], spec["batch"]
    device = torch.device("cuda" if method == "cuda" else "cpu")
    data = _data(spec, "io/patch-dataset") if method == "torchio" else \
        _data(spec, "io/batch-augment", {"run_on": RUN_ON[method]}, device=device.type)
    # the loader keeps up to 2 batches per worker in flight (prefetch_factor): a window shorter than a few of
    # those could be served from batches made before it began (once: 288 samples/s, at a CPU cost per sample
    # below what one costs to make); so warm up past them and time windows of 3 times as many
    in_flight = 2 * max(1, spec["workers"])
    per_window = max(math.ceil(MIN_SAMPLES / batch), 3 * in_flight)
    warmup = max(spec["warmup"], math.ceil(WARM_SAMPLES / batch), in_flight)
    dataset = data.train_dataset(10**7)  # windows run for a time as well: never short of patches
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, num_workers=spec["workers"],
                                         persistent_workers=spec["workers"] > 0, pin_memory=device.type == "cuda",
                                         generator=torch.Generator().manual_seed(0),
                                         collate_fn=getattr(dataset, "collate", None))  # as the trainer's
    on_device = getattr(data, "on_device", None)

    def next_batch(it) -> None:
        items = next(it)
        if on_device is not None:
            items = {k: v.to(device, non_blocking=True) for k, v in items.items()}
            items = on_device(items)
        return items

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    it = iter(loader)
    next_batch(it)
    if device.type == "cpu":
        keep_freed_memory()  # as the trainer does on a CPU, once the workers started
    for _ in range(warmup - 1):
        next_batch(it)
    sync()
    rates, cpu_ms = [], []
    for _ in range(spec["windows"]):
        start, cpu, count = time.perf_counter(), _cpu_seconds(it), 0
        while count < per_window or time.perf_counter() - start < MIN_SECONDS:
            next_batch(it)
            count += 1
        sync()
        rates.append(count * batch / (time.perf_counter() - start))
        cpu_ms.append(1000 * (_cpu_seconds(it) - cpu) / (count * batch))
    del it
    gpu = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else float("nan")
    emit({"rates": rates, "cpu_ms": cpu_ms, "gpu_peak_mib": gpu})


def _cpu_seconds(iterator) -> float:
    """User + system CPU seconds of this process and of the loader's live workers (/proc): what a sample costs
    the machine, whatever share of it the case got."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    total = usage.ru_utime + usage.ru_stime
    for worker in getattr(iterator, "_workers", []):  # the DataLoader iterator's worker processes
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = Path(f"/proc/{worker.pid}/stat").read_text(encoding="utf-8").rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def _child_libraries(spec: dict) -> None:
    """ms/sample of MONAI's per-sample pipeline (and kornia's RandomAffine3D) on io/batch-augment's crops, on one
    thread as on_device runs on a CPU (two threads on busy cores mostly wait for each other)."""
    import torch

    torch.set_num_threads(1)
    torch.manual_seed(0)
    data = _data(spec, "io/batch-augment")
    ds = data.train_dataset(2 * spec["batch"])
    crops = [ds.collate([ds[i + j] for j in range(spec["batch"])])
             for i in range(0, 2 * spec["batch"], spec["batch"])]
    times = {"io/batch-augment on_device": _time_per_sample(lambda b: data.on_device(b), crops, spec)}
    monai = _monai_pipeline(spec["patch"], data.params)
    times["monai per sample (dict transforms)"] = _time_per_sample(
        lambda b: [monai({"image": image, "mask": mask[None]}) for image, mask in _samples(b)], crops, spec)
    try:
        import kornia.augmentation as K

        affine = K.RandomAffine3D(degrees=data.params.rotation_degrees, scale=(tuple(data.params.scales),) * 3,
                                  p=data.params.p_rotate)
        times["kornia RandomAffine3D (image only)"] = _time_per_sample(
            lambda b: [affine(b[key]) for key in ("crop_image", "rot_image") if len(b[key])], crops, spec)
    except ImportError:
        times["kornia RandomAffine3D (image only)"] = "n/a (kornia not installed)"
    emit({"ms_per_sample": times})


def _time_per_sample(fn, batches, spec) -> str:
    fn(batches[0])
    start, cpu, count = time.perf_counter(), time.process_time(), 0
    for _ in range(spec["repeats"]):
        for b in batches:
            fn(b)
            count += len(b["crop_image"]) + len(b["rot_image"])
    wall, cpu = (time.perf_counter() - start) / count, (time.process_time() - cpu) / count
    return f"{1000 * wall:.1f} wall, {1000 * cpu:.1f} CPU"


def _samples(batch: dict):
    """(image, mask) of every crop of a :class:`CropCollate` batch, patch-sized and enlarged."""
    for prefix in ("crop_", "rot_"):
        yield from zip(batch[prefix + "image"], batch[prefix + "mask"], strict=True)


def _monai_pipeline(patch: int, p):
    """MONAI's nearest equivalents of io/patch-dataset's transforms, with its probabilities and ranges."""
    import monai.transforms as mt

    keys, image = ["image", "mask"], ["image"]
    rad = math.radians(p.rotation_degrees)
    zoom = tuple(s - 1 for s in p.scales)
    return mt.Compose([
        mt.RandAffined(keys, prob=p.p_rotate, rotate_range=(rad,) * 3, spatial_size=(patch,) * 3,
                       mode=("bilinear", "nearest"), padding_mode="border"),
        mt.CenterSpatialCropd(keys, roi_size=(patch,) * 3),
        mt.RandAffined(keys, prob=p.p_scale, scale_range=(zoom,) * 3, mode=("bilinear", "nearest")),
        mt.RandSimulateLowResolutiond(image, prob=p.p_anisotropy, zoom_range=(1 / p.anisotropy_downsampling[1], 1.0)),
        *[mt.RandFlipd(keys, prob=p.p_flip, spatial_axis=a) for a in range(3)],
        mt.RandBiasFieldd(image, prob=p.p_bias, coeff_range=(-p.bias_coefficients, p.bias_coefficients)),
        mt.RandGaussianSmoothd(image, prob=p.p_blur, sigma_x=tuple(p.blur_std), sigma_y=tuple(p.blur_std),
                               sigma_z=tuple(p.blur_std)),
        mt.RandGaussianNoised(image, prob=p.p_noise, std=p.noise_std[1]),
        mt.RandCoarseShuffled(image, prob=p.p_swap, holes=p.swap_iterations, spatial_size=max(1, patch // 8)),
        mt.RandAdjustContrastd(image, prob=p.p_gamma, gamma=tuple(math.exp(g) for g in p.log_gamma)),
    ]).set_random_state(0)


CHILDREN = {"data": _child_data, "loader": _child_loader, "libraries": _child_libraries}


if __name__ == "__main__":
    main()

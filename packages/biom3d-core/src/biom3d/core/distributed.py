"""Several processes, one model: PyTorch's DistributedDataParallel started by torchrun, never by us.

torchrun (or ``srun`` with the same variables) starts one process per device and sets ``RANK``,
``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``; this module reads them, opens the process
group (nccl on CUDA, gloo on CPU) with a timeout on every collective, so that a dead or hung rank ends the job
instead of hanging it, derives each rank's seed from the run's, averages figures over the ranks, lets rank 0
alone write and splits prediction inputs (:mod:`biom3d.core.launcher` re-launches ``biom3d train --devices 0,1``
under ``torch.distributed.run``). Without those variables everything here is the one-process case, at no cost.

Stdlib only at import; torch is imported where a group is used.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import socket
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from biom3d.core.errors import InputError, RunError

log = logging.getLogger("biom3d")
T = TypeVar("T")
#: rank r draws with seed + SEED_STRIDE * r, so rank 0 draws as a one-process run does
SEED_STRIDE = 1000
#: a folder: each rank appends what it contributes to every reduction to rank-<r>.jsonl (for tests, debugging)
DEBUG_DIR_ENV = "BIOM3D_DDP_DEBUG_DIR"
#: how long ranks wait for rank 0's whole stage (`biom3d run`'s preprocessing, evaluation) or for each other's
#: predictions: a stage can outlast train.ddp_timeout, and a dead rank 0 is torchrun's to notice (it stops the job)
STAGE_TIMEOUT_S = 7 * 24 * 3600
_FAILURE_MARKS = ("gloo", "nccl", "Connection closed by peer", "Connection reset by peer", "ProcessGroup",
                  "Timed out waiting", "Watchdog caught collective")


@dataclass(frozen=True)
class World:
    """This process's place among the processes of one job."""

    rank: int = 0
    local_rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def current() -> World:
    """The world the environment describes (torchrun's variables); one process without them."""
    try:
        size = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError as exc:
        raise InputError(f"RANK, LOCAL_RANK and WORLD_SIZE must be integers (torchrun sets them): {exc}") from exc
    if size < 1 or not 0 <= rank < size:
        raise InputError(f"RANK {rank} does not fit WORLD_SIZE {size}: start the processes with torchrun")
    return World(rank, local, size)


def is_main() -> bool:
    """Whether this process writes the run folder (rank 0, or the only process)."""
    return current().is_main


def rank_seed(seed: int | None, rank: int) -> int | None:
    """The seed rank ``rank`` draws its patches with (None: unseeded)."""
    return None if seed is None else seed + SEED_STRIDE * rank


def rank_device(name: str, world: World | None = None, *, training: bool = True) -> Any:
    """This rank's ``torch.device``: ``auto``/``cuda`` become ``cuda:LOCAL_RANK`` under torchrun. In training
    one GPU per rank is a rule of DDP, so an explicit ``cuda:N`` is refused there."""
    from biom3d.core.devices import resolve_device

    world = world or current()
    device = resolve_device(name)
    if not world.distributed:
        return device
    if device.type == "mps":
        raise InputError("train.device mps: DDP runs on CUDA (nccl) or on the CPU (gloo); use --device cpu")
    if device.type != "cuda" or (not training and ":" in name):
        return device
    import torch

    if ":" in name:
        raise InputError(f"train.device {name}: under torchrun each rank takes cuda:LOCAL_RANK; use --device cuda "
                         "(or auto) and choose the GPUs with CUDA_VISIBLE_DEVICES or `biom3d train --devices`")
    count = torch.cuda.device_count()
    if world.local_rank >= count:
        raise InputError(f"rank {world.rank} has LOCAL_RANK {world.local_rank} but {count} GPU(s) are visible: "
                         f"start at most {count} processes per node (--nproc_per_node)")
    return torch.device("cuda", world.local_rank)


def local_batch(global_batch: int, world: World) -> int:
    """The config's batch size is the global batch, split over the ranks."""
    if global_batch % world.size:
        from biom3d.core.errors import ConfigError, Problem

        raise ConfigError([Problem("train.batch_size", f"{global_batch} is the global batch, split over the "
                                   f"{world.size} ranks: it must be a multiple of {world.size} (e.g. "
                                   f"{global_batch // world.size * world.size or world.size})")])
    return global_batch // world.size


def rank_indices(length: int, global_batch: int, world: World) -> list[int]:
    """Which items of a ``length``-item dataset this rank loads: in step j, slots ``r*b .. r*b+b-1`` of the
    global batch j. The union over ranks is the one-process item set, and an item keeps its position in the
    global batch (datasets read it, e.g. to centre some patches of each batch on foreground)."""
    b = global_batch // world.size
    steps = length // global_batch
    return [j * global_batch + world.rank * b + p for j in range(steps) for p in range(b)]


# -- the process group ---------------------------------------------------------------------------------------
@contextlib.contextmanager
def session(device: Any, timeout_s: float) -> Iterator[World]:
    """Join the job's process group for the time of the block (nothing to do in one process, or when the
    caller joined already: biom3d's own groups then last until the process exits). Collectives fail after
    ``timeout_s`` seconds instead of waiting for ever; ranks other than 0 log warnings only."""
    world = current()
    if not world.distributed or _initialized():
        yield world
        return
    from datetime import timedelta

    import torch
    import torch.distributed as dist

    backend = "nccl" if device.type == "cuda" else "gloo"
    options: dict[str, Any] = {}
    if backend == "nccl":
        torch.cuda.set_device(device)
        options["device_id"] = device
    try:
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s), **options)
        _OWN.control_timeout_s = timeout_s
    except (ValueError, RuntimeError) as exc:
        raise RunError(f"rank {world.rank} of {world.size} cannot join the process group ({_first_line(exc)}); "
                       "start every process with torchrun, which sets RANK, WORLD_SIZE, MASTER_ADDR and "
                       "MASTER_PORT (see docs/distributed.md)") from exc
    level = log.level
    if not world.is_main:
        log.setLevel(logging.WARNING)
    _debug_record(world, {"event": "joined", "pid": os.getpid(), "backend": backend})
    try:
        yield world
    except Exception as exc:
        if is_collective_failure(exc):
            raise lost_ranks(exc, timeout_s) from exc
        raise
    finally:
        log.setLevel(level)
        _OWN.close()  # ours; destroy_process_group drops torch's, and their threads end
        dist.destroy_process_group()


def is_collective_failure(exc: BaseException) -> bool:
    """Whether ``exc`` is a collective that failed because another rank died, hung or left."""
    dist = sys.modules.get("torch.distributed")
    if dist is not None and isinstance(exc, getattr(dist, "DistError", ())):
        return True
    return isinstance(exc, RuntimeError) and any(mark in str(exc) for mark in _FAILURE_MARKS)


def lost_ranks(exc: BaseException, timeout_s: float, run_dir: Path | None = None) -> RunError:
    """The error a rank ends with when the others stopped answering."""
    world = current()
    where = f" of {run_dir}" if run_dir is not None else ""
    resume = f"biom3d train --resume {run_dir}" if run_dir is not None else "biom3d train --resume RUN_FOLDER"
    return RunError(f"rank {world.rank} of {world.size}: the other ranks stopped answering ({_first_line(exc)}); "
                    f"a rank died or hung (each collective waits at most train.ddp_timeout = {timeout_s:g} s). "
                    f"Continue from the last checkpoint{where} with `{resume}` under the same launcher (torchrun "
                    "--max-restarts does it by itself, see docs/distributed.md)")


def run_on_main(fn: Callable[[], T], *, stage: bool = False) -> T:
    """``fn()`` on rank 0 while the others wait; every rank returns its result. If it fails on rank 0, rank 0
    raises its error and the others a RunError that names it (not a timeout later). A ``stage`` (a whole
    pipeline stage) may take longer than the collective timeout: the others wait up to STAGE_TIMEOUT_S."""
    if not _active():
        return fn()
    import torch.distributed as dist

    box: list[Any] = [None]
    error: BaseException | None = None
    if dist.get_rank() == 0:
        try:
            box[0] = ("ok", fn())
        except BaseException as exc:
            error, box[0] = exc, ("error", f"{type(exc).__name__}: {exc}")
    dist.broadcast_object_list(box, src=0, group=_OWN.group("stage" if stage else "control"))
    if error is not None:
        raise error
    status, value = box[0]
    if status == "error":
        raise RunError(f"rank {dist.get_rank()}: rank 0 failed, so this rank stops too: {value}")
    return value


def wait_for_all() -> None:
    """Every rank reaches this point before any goes on (each rank's share of a stage is done); the wait is a
    stage's (STAGE_TIMEOUT_S). Nothing to wait for in one process."""
    if _active():
        import torch.distributed as dist

        dist.barrier(group=_OWN.group("stage"))


def gather(value: T) -> list[T]:
    """Every rank's ``value``, in rank order, on every rank (``[value]`` in one process)."""
    if not _active():
        return [value]
    import torch.distributed as dist

    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, value, group=_OWN.group("control"))
    return out


def mean_over_ranks(parts: Mapping[str, tuple[Any, int]], tag: str = "") -> dict[str, Any]:
    """``{name: (sum, count)}`` of this rank -> ``{name: sum over ranks / count over ranks}`` (a float, or a
    float64 tensor for a vector sum), the same numbers on every rank; nan where no rank counted anything."""
    import torch

    names = list(parts)
    sums = [torch.as_tensor(parts[n][0]).detach().to("cpu", torch.float64) for n in names]
    counts = torch.tensor([float(parts[n][1]) for n in names], dtype=torch.float64)
    flat = torch.cat([s.reshape(-1) for s in sums] + [counts])
    world = current()
    _debug_record(world, {"event": "reduce", "tag": tag,
                          "parts": {n: [s.tolist(), int(parts[n][1])] for n, s in zip(names, sums, strict=True)}})
    if _active():
        import torch.distributed as dist

        dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=_OWN.group("control"))
    out, i = {}, 0
    total_counts = flat[-len(names):]
    for k, (name, s) in enumerate(zip(names, sums, strict=True)):
        total = flat[i:i + s.numel()].reshape(s.shape)
        i += s.numel()
        mean = total / total_counts[k] if total_counts[k] > 0 else torch.full_like(total, float("nan"))
        out[name] = float(mean) if mean.ndim == 0 else mean
    return out


def describe_ranks(world: World, device: Any, seed: int | None) -> list[dict[str, Any]]:
    """Every rank's host, device and seed, gathered (one entry in one process)."""
    return gather({"rank": world.rank, "local_rank": world.local_rank, "host": socket.gethostname(),
                   "device": str(device), "seed": rank_seed(seed, world.rank), "pid": os.getpid()})


def wrap(model: Any, device: Any) -> Any:
    """The model DDP trains (gradients averaged over the ranks), or the model itself in one process. On CUDA,
    batch norms become synchronised ones, as nnU-Net does (same parameters and state_dict keys; none on the CPU,
    where torch has no synchronised batch norm)."""
    if not _active():
        return model
    import torch
    from torch.nn.parallel import DistributedDataParallel

    if device.type == "cuda":
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def unwrap(model: Any) -> Any:
    """The network inside a DDP wrapper: what checkpoints hold and one process predicts with."""
    ddp = sys.modules.get("torch.nn.parallel")
    cls = getattr(ddp, "DistributedDataParallel", None)
    return model.module if cls is not None and isinstance(model, cls) else model


# -- prediction ----------------------------------------------------------------------------------------------
def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` (I from 0) -> (I, N); anything else is an input error that says the form."""
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        index, count = -1, 0
    if count < 1 or not 0 <= index < count:
        raise InputError(f"--shard {text!r}: give I/N with 0 <= I < N, e.g. --shard 0/4 for the first of four "
                         "parts (a SLURM array task: --shard $SLURM_ARRAY_TASK_ID/4 with --array=0-3)")
    return index, count


def shard(items: Sequence[T], part: tuple[int, int] | None = None, world: World | None = None) -> list[T]:
    """This process's share of ``items``: part I of N (``--shard``), then, under torchrun, this rank's share
    of that. Every item falls in exactly one share, whatever the number of items."""
    world = world or current()
    index, count = part or (0, 1)
    index, count = index * world.size + world.rank, count * world.size
    return list(items[index::count])


# -- helpers -------------------------------------------------------------------------------------------------
def _initialized() -> bool:
    dist = sys.modules.get("torch.distributed")
    return dist is not None and dist.is_available() and dist.is_initialized()


class _OwnGroups:
    """The gloo groups biom3d's own collectives (objects, figures, barriers) run on, never the default group:
    DDP keeps that one alive until the interpreter ends (torch 2.13: neither `del` nor gc frees it), and a gloo
    thread of a group alive at exit may still be releasing a tensor of the last collective. That needs the GIL,
    which finalisation no longer gives, and a rank of a finished job aborts ("terminate called without an active
    exception"). Ours are dropped with the session (or at exit), which ends their threads first.

    "control": the session's collective timeout (torch's default when the caller opened the process group);
    "stage": a whole stage's, STAGE_TIMEOUT_S. Each is made the first time the ranks need it (all at once, as
    torch requires). gloo: objects and figures stay on the CPU, whatever the training backend."""

    def __init__(self) -> None:
        self.groups: dict[str, Any] = {}
        self.control_timeout_s: float | None = None

    def group(self, name: str) -> Any:
        from datetime import timedelta

        import torch.distributed as dist

        if name not in self.groups:
            if not self.groups:
                atexit.register(self.close)  # groups of a caller's process group: gone before finalisation
            seconds = STAGE_TIMEOUT_S if name == "stage" else self.control_timeout_s
            self.groups[name] = dist.new_group(backend="gloo",
                                               timeout=None if seconds is None else timedelta(seconds=seconds))
        return self.groups[name]

    def close(self) -> None:
        self.groups.clear()
        self.control_timeout_s = None
        atexit.unregister(self.close)


_OWN = _OwnGroups()


def _active() -> bool:
    """A process group of more than one rank is open."""
    if not _initialized():
        return False
    import torch.distributed as dist

    return dist.get_world_size() > 1


def _debug_record(world: World, entry: dict[str, Any]) -> None:
    folder = os.environ.get(DEBUG_DIR_ENV)
    if not folder:
        return
    path = Path(folder) / f"rank-{world.rank}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps({"rank": world.rank, "world_size": world.size, **entry}) + "\n")


def _first_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:240]}"

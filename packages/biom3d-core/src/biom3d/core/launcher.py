"""``biom3d train|run --devices 0,1`` / ``--gpus N``: the same command again under torchrun's own launcher
(``torch.distributed.run``), one process per GPU, so that a biologist need not learn torchrun. This process is
replaced by the launcher's; everything distributed after that is :mod:`biom3d.core.distributed`'s.

Stdlib only at import: the CLI imports it before deciding anything; torch is imported to count the GPUs.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from biom3d.core.distributed import current
from biom3d.core.errors import InputError

log = logging.getLogger("biom3d")
LAUNCH_FLAGS = ("--devices", "--gpus")


def parse_devices(text: str) -> list[str]:
    """``"0,1"`` -> ["0", "1"]: the GPU ids (as nvidia-smi numbers them) to train on."""
    ids = [part.strip() for part in text.split(",") if part.strip()]
    if not ids or not all(i.isdigit() for i in ids) or len(set(ids)) != len(ids):
        raise InputError(f"--devices {text!r}: give distinct GPU numbers separated by commas, e.g. --devices 0,1")
    return ids


def launch(argv: Sequence[str], *, devices: str | None, gpus: int | None) -> None:
    """``biom3d train --devices 0,1 ...``: run the same command under torchrun, one process per GPU (this
    process is replaced; it never returns then). One GPU needs no launcher: the command goes on here."""
    if devices is not None and gpus is not None:
        raise InputError("give --devices or --gpus, not both")
    if current().distributed:
        raise InputError(f"{' / '.join(LAUNCH_FLAGS)} start torchrun themselves, and this process already runs under "
                         "a launcher (WORLD_SIZE is set): drop them")
    ids = parse_devices(devices) if devices is not None else None
    count = len(ids) if ids is not None else int(gpus or 0)
    if ids is not None:  # before CUDA starts in this process: it reads the variable once
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(ids)
    import torch

    if not torch.cuda.is_available():
        raise InputError(f"{'--devices' if ids else '--gpus'} starts one process per GPU, but CUDA is not available "
                         "here; for several CPU processes use torchrun yourself: torchrun --standalone "
                         f"--nproc_per_node=2 -m biom3d.cli {' '.join(without_launch_flags(argv)) or 'train CONFIG'} "
                         "(see docs/distributed.md)")
    if ids is None and count > torch.cuda.device_count():
        raise InputError(f"--gpus {count}: only {torch.cuda.device_count()} GPU(s) are visible")
    if count <= 1:
        return
    command = torchrun_command(count, argv)
    log.info("launching %d processes: %s", count, " ".join(command))
    _exec(command)


def torchrun_command(nproc: int, argv: Sequence[str]) -> list[str]:
    """torchrun's own launcher on this node, running ``biom3d`` with ``argv`` less the launch flags."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "-m", "biom3d.cli", *without_launch_flags(argv)]


def without_launch_flags(argv: Sequence[str]) -> list[str]:
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in LAUNCH_FLAGS:
            skip = True
        elif not arg.startswith(tuple(f"{flag}=" for flag in LAUNCH_FLAGS)):
            out.append(arg)
    return out


def _exec(command: list[str]) -> NoReturn:
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(command[0], command)

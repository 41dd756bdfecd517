"""Loader batches through a worker's reused shared-memory buffers instead of fresh ones per batch.

A DataLoader worker hands each batch's tensors to the training process through shared memory. PyTorch makes a new
segment per tensor per batch, so both processes fault in fresh pages every batch. Batches of two 64^3 samples
(2.5 MiB) cost a worker 1.9-2.0 ms of CPU per sample that way and the training process 0.7-0.8 ms, against 0.7
and 0.5 through :func:`share` (its copy into the buffer included): 1.5 ms per sample saved, of the 12 that
io/batch-augment's whole batch costs a CPU worker.

How a buffer is known to be free: each worker process keeps a ring of buffers (one per batch in flight, packed
with all of the batch's tensors) and a small shared table of their states, which it creates and sends along with its
batches until the receiving process acknowledges it. A buffer is busy from the moment the worker fills it; the
receiving process marks it free once no tensor of its own references the batch any longer (PyTorch's weak storage
reference says so; checked whenever a batch arrives). So a batch the trainer, a callback or the pinning thread
still holds is never overwritten, whatever the DataLoader's prefetching; a consumer that holds many batches only
makes the worker fall back to PyTorch's own transport until it lets go of some. Each worker process has its own
table, so workers that a non-persistent loader restarts never meet a previous one's buffers, and a process forked
from the receiver starts with no record (it holds none of the buffers it inherited a view of). The one thing the
receiver cannot see: a batch's tensor handed on to another process (a ``multiprocessing`` queue) shares the buffer
without referencing it here; copy it first.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch.multiprocessing.reductions import StorageWeakRef

from biom3d.core import processes

#: buffers per worker: the batches in flight (the DataLoader's prefetch_factor, 2 by default), the ones the
#: consumer holds (the current one, often the previous one while it fetches the next) and slack
SLOTS = 8
#: offsets of the tensors in a buffer (any dtype's alignment, and cache lines)
ALIGN = 64
#: the table's cell that says the receiver holds the table (then the worker stops sending it); slot ``s`` is
#: cell ``s + 1``
HELD_CELL = 0
#: a slot's states
FREE, BUSY = 0, 1

Kind = Callable[[dict], Mapping]


def share(batch: Mapping[str, torch.Tensor], kind: Kind = dict) -> object:
    """``batch`` as the loader should return it from a worker's ``collate_fn``: through this worker process's
    reused buffers (it arrives as ``kind(tensors)``, views of one buffer). In the main process (no workers):
    ``kind(batch)`` as it is; when the ring is full, or shared memory short: ``kind(batch)`` through PyTorch's own
    transport."""
    if torch.utils.data.get_worker_info() is None:
        return kind(dict(batch))
    return _ring().send(batch, kind)


def stats() -> dict[str, int]:
    """This (receiving) process's counts: batches received through buffers, how many of them in a buffer used
    before, the ones sent through PyTorch's transport instead, and the worker tables and buffers it holds."""
    return _RECEIVER.stats()


# -- the worker's side ------------------------------------------------------------------------------------------

class _Ring:
    """One worker process's buffers and their table (made in the worker: a restarted worker makes new ones)."""

    def __init__(self):
        self.table = torch.zeros(SLOTS + 1, dtype=torch.int64).share_memory_()
        self.buffers: list[torch.Tensor | None] = [None] * SLOTS
        self.used = [False] * SLOTS
        self.key = (os.getpid(), int.from_bytes(os.urandom(8), "little"))  # not torch's RNG: the draws stay as they are

    def send(self, batch: Mapping[str, torch.Tensor], kind: Kind) -> _Sent | _Unpooled:
        layout, size = _layout(batch)
        try:
            slot = self._free_slot(size)
        except RuntimeError:  # no room left in shared memory: PyTorch's transport says so in its own words
            slot = None
        if slot is None:  # every buffer still held by the receiver
            return _Unpooled(dict(batch), kind)
        buffer = self.buffers[slot]
        self.table[slot + 1] = BUSY
        for (_, dtype, shape, offset), tensor in zip(layout, batch.values(), strict=True):
            _view(buffer, dtype, shape, offset).copy_(tensor)
        table = None if self.table[HELD_CELL] else self.table
        reused, self.used[slot] = self.used[slot], True
        return _Sent(buffer, tuple(layout), table, self.key, slot, reused, kind)

    def _free_slot(self, size: int) -> int | None:
        """A free buffer of at least ``size`` bytes (the smallest), else a free one grown or a new one."""
        states = self.table.tolist()
        free = [s for s in range(SLOTS) if states[s + 1] == FREE]
        fits = [s for s in free if self.buffers[s] is not None and len(self.buffers[s]) >= size]
        if fits:
            return min(fits, key=lambda s: len(self.buffers[s]))
        if not free:
            return None
        slot = min(free, key=lambda s: -1 if self.buffers[s] is None else len(self.buffers[s]))
        self.buffers[slot] = None  # the old one goes before the new one is made
        self.buffers[slot] = torch.empty(size, dtype=torch.uint8).share_memory_()
        self.used[slot] = False
        return slot


_RING: _Ring | None = None


def _ring() -> _Ring:
    global _RING
    if _RING is None or _RING.key[0] != os.getpid():  # a fork of a process that had one: its own
        _RING = _Ring()
    return _RING


def _layout(batch: Mapping[str, torch.Tensor]) -> tuple[list[tuple], int]:
    layout, offset = [], 0
    for key, tensor in batch.items():
        layout.append((key, tensor.dtype, tuple(tensor.shape), offset))
        offset += -(-tensor.numel() * tensor.element_size() // ALIGN) * ALIGN
    return layout, max(offset, ALIGN)


def _view(buffer: torch.Tensor, dtype: torch.dtype, shape: tuple, offset: int) -> torch.Tensor:
    return buffer[offset:offset + math.prod(shape) * dtype.itemsize].view(dtype).view(shape)


@dataclass
class _Sent:
    """What the worker's collate returns: pickled (by the DataLoader, to the receiver) as its buffer and layout,
    unpickled as ``kind`` of the views (:func:`_receive`)."""

    buffer: torch.Tensor
    layout: tuple
    table: torch.Tensor | None
    key: tuple[int, int]
    slot: int
    reused: bool
    kind: Kind

    def __reduce__(self):
        return _receive, (self.buffer, self.layout, self.table, self.key, self.slot, self.reused, self.kind)


@dataclass
class _Unpooled:
    """A batch sent through PyTorch's transport: unpickled, it still lets the receiver free what it let go of (the
    worker's ring would otherwise stay full once a consumer had held all of it)."""

    batch: dict
    kind: Kind

    def __reduce__(self):
        return _receive_unpooled, (self.batch, self.kind)


def _receive(buffer: torch.Tensor, layout: tuple, table: torch.Tensor | None, key: tuple[int, int], slot: int,
             reused: bool, kind: Kind) -> Mapping:
    _RECEIVER.note(buffer, table, key, slot, reused)
    return kind({name: _view(buffer, dtype, shape, offset) for name, dtype, shape, offset in layout})


def _receive_unpooled(batch: dict, kind: Kind) -> Mapping:
    _RECEIVER.note_unpooled()
    return kind(batch)


# -- the receiver's side -----------------------------------------------------------------------------------------

class _Receiver:
    """The receiving process's record: each worker's table, and the buffers its batches still hold."""

    def __init__(self):
        self.lock = threading.Lock()  # the pinning thread receives too
        self.tables: dict[tuple[int, int], torch.Tensor] = {}
        self.held: list[tuple[tuple[int, int], int, StorageWeakRef]] = []
        self.counts = {"batches": 0, "reused": 0, "unpooled": 0}

    def note(self, buffer: torch.Tensor, table: torch.Tensor | None, key: tuple[int, int], slot: int,
             reused: bool) -> None:
        with self.lock:
            self._release()
            if table is not None and key not in self.tables:
                self.tables[key] = table
                table[HELD_CELL] = 1
                self._forget_exited()
            if key in self.tables:
                self.held.append((key, slot, StorageWeakRef(buffer.untyped_storage())))
            self.counts["batches"] += 1
            self.counts["reused"] += reused

    def note_unpooled(self) -> None:
        with self.lock:
            self._release()
            self.counts["unpooled"] += 1

    def stats(self) -> dict[str, int]:
        with self.lock:
            self._release()
            return {**self.counts, "tables": len(self.tables), "held": len(self.held)}

    def _release(self) -> None:
        still = []
        for key, slot, ref in self.held:
            if ref.expired():
                self.tables[key][slot + 1] = FREE
            else:
                still.append((key, slot, ref))
        self.held = still

    def _forget_exited(self) -> None:
        """Drop the tables of worker processes gone (a non-persistent loader's previous epochs) that hold nothing
        (on Windows, where that cannot be asked, they stay: a few small tables)."""
        holding = {key for key, _, _ in self.held}
        for key in [k for k in self.tables if k not in holding and processes.running(k[0]) is False]:
            del self.tables[key]


_RECEIVER = _Receiver()


def _forget_all() -> None:
    """In a forked child: the parent's record is not the child's (freeing the parent's slots from here would let
    its workers refill buffers the parent still holds), and its lock may have been held at the fork."""
    global _RECEIVER
    _RECEIVER = _Receiver()


if hasattr(os, "register_at_fork"):  # not on Windows, which does not fork
    os.register_at_fork(after_in_child=_forget_all)

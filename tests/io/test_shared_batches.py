"""Loader batches through a worker's reused shared buffers (biom3d.io.shared_batches): every batch arrives as it
was made and stays so while held, a buffer is reused only once the receiver holds none of its tensors, and
restarted workers or forked receivers start afresh."""

from __future__ import annotations

import gc
import multiprocessing

import torch

from biom3d.io import shared_batches

BATCH = 3
WORKERS, PREFETCH = 2, 2  # a loader's batches in flight: PyTorch's default prefetch per worker
# With several workers a batch can arrive before the one the loop asks for (the loader keeps it until its turn),
# so the receiver may have counted up to this many more than the loop took.
AHEAD = WORKERS * PREFETCH - 1


class Indices(torch.utils.data.Dataset):
    """Item ``i`` is ``i``: the collate makes the batch's tensors from the indices."""

    def __len__(self) -> int:
        return 10**6

    def __getitem__(self, index: int) -> int:
        return index


class Kind(dict):
    """The type batches arrive as (io/batch-augment's CropBatch, here)."""


class Collate:
    """A picklable collate_fn, sending through the ring: an image full of each index (float32), a mask full of
    ``index % 251`` (uint8), the indices (int64)."""

    def __call__(self, indices: list[int]):
        index = torch.tensor(indices)
        image = index.float().view(-1, 1, 1, 1).expand(-1, 2, 6, 5).contiguous()
        mask = (index % 251).to(torch.uint8).view(-1, 1, 1).expand(-1, 3, 7).contiguous()
        return shared_batches.share({"image": image, "mask": mask, "index": index}, Kind)


def _loader(workers: int, persistent: bool = True) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(Indices(), batch_size=BATCH, num_workers=workers, collate_fn=Collate(),
                                       persistent_workers=persistent and workers > 0,
                                       prefetch_factor=PREFETCH if workers else None)


def _is(batch, step: int) -> bool:
    """Whether ``batch`` is still the loader's batch number ``step`` (every tensor, not only its own index)."""
    index = torch.arange(BATCH * step, BATCH * (step + 1))
    return bool((batch["index"] == index).all() and (batch["image"] == index.float().view(-1, 1, 1, 1)).all()
                and (batch["mask"] == (index % 251).to(torch.uint8).view(-1, 1, 1)).all())


def _stats() -> dict[str, int]:
    gc.collect()  # batches of earlier tests left in reference cycles
    return shared_batches.stats()


def test_held_batches_are_never_overwritten_and_dropped_ones_are_reused():
    """Every other batch kept to the end: a ring that reused buffers in turn, without asking the receiver, would
    have written later batches over them. With 2 workers taking turns, the kept ones all come from worker 0: its
    ring fills and it sends the rest through PyTorch's transport; worker 1's dropped batches come back as buffers
    used before."""
    before = _stats()
    kept = []
    for step, batch in zip(range(60), _loader(workers=WORKERS), strict=False):
        assert type(batch) is Kind and _is(batch, step)
        if step % 2 == 0:
            kept.append((step, batch))
    del batch
    assert all(_is(batch, step) for step, batch in kept)
    after = _stats()
    pooled, unpooled = after["batches"] - before["batches"], after["unpooled"] - before["unpooled"]
    assert 60 <= pooled + unpooled <= 60 + AHEAD and unpooled > 0
    assert after["reused"] - before["reused"] > 0
    del kept
    assert _stats()["held"] <= before["held"]  # released once their last tensor went


def test_a_consumer_that_drops_each_batch_keeps_reusing_a_few_buffers():
    before = _stats()
    for step, batch in zip(range(40), _loader(workers=WORKERS), strict=False):
        assert _is(batch, step)
    after = _stats()
    assert after["unpooled"] == before["unpooled"]  # none fell back to fresh segments
    pooled = after["batches"] - before["batches"]
    assert 40 <= pooled <= 40 + AHEAD
    # new buffers: the batches in flight and held per worker, not one per batch
    assert pooled - (after["reused"] - before["reused"]) <= 12


def test_a_full_ring_is_reused_again_once_its_batches_are_dropped():
    """One worker, 12 batches held (its ring has 8 buffers): the last ones come through PyTorch's transport, and
    once all are dropped the ring serves the next batches again."""
    before = _stats()
    loader = iter(_loader(workers=1))
    held = [next(loader) for _ in range(12)]
    assert all(_is(batch, step) for step, batch in enumerate(held))
    assert _stats()["unpooled"] - before["unpooled"] >= 4
    del held
    middle = _stats()
    for step in range(12, 32):
        assert _is(next(loader), step)
    after = _stats()
    assert after["reused"] - middle["reused"] >= 15  # the 20 after: a few in flight yet unpooled, then the ring


def test_in_the_main_process_the_batch_is_returned_as_it_is():
    image = torch.arange(6.0)
    batch = shared_batches.share({"image": image}, Kind)
    assert type(batch) is Kind and batch["image"] is image
    for step, batch in zip(range(3), _loader(workers=0), strict=False):
        assert type(batch) is Kind and _is(batch, step)


def test_restarted_workers_send_their_own_tables_and_the_exited_ones_are_dropped():
    """A non-persistent loader starts new workers each epoch: each sends its own table, and the receiver lets go of
    the tables of workers gone once it holds nothing of theirs."""
    loader = _loader(workers=2, persistent=False)
    before = _stats()["tables"]
    for _ in range(3):
        for step, batch in enumerate(loader):
            assert _is(batch, step)
            if step == 10:
                break
        del batch
    assert _stats()["tables"] <= before + 4  # this epoch's two, at most the previous epoch's two as well


_HELD: list = []  # the parent's held batch, where the forked child can let go of its copy


def _child_receives(done) -> None:
    """A forked child of the receiver: lets go of what it inherited and receives batches of its own."""
    _HELD.clear()
    gc.collect()
    for step, batch in zip(range(12), _loader(workers=1), strict=False):
        assert _is(batch, step)
    done.put(shared_batches.stats()["batches"])


def test_a_forked_receiver_never_frees_its_parents_buffers():
    """The child inherits the parent's record of held buffers. Were it to release them (its copies of the
    batches are gone in the child), the parent's worker would refill a buffer the parent still holds."""
    loader = iter(_loader(workers=1))
    _HELD.append(next(loader))
    assert _is(_HELD[0], 0)
    context = multiprocessing.get_context("fork")
    done = context.Queue()
    child = context.Process(target=_child_receives, args=(done,))
    child.start()
    assert done.get(timeout=60) >= 8  # the child's own count: it started from none of the parent's
    child.join(timeout=60)
    assert child.exitcode == 0
    for step in range(1, 20):  # the parent's worker refills whatever the parent's record says is free
        assert _is(next(loader), step)
    assert _is(_HELD.pop(), 0)

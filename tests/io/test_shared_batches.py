"""Loader batches through a worker's reused shared buffers (biom3d.io.shared_batches): every batch arrives as it
was made, a buffer is reused only once the receiver holds none of its tensors, and restarted workers start afresh."""

from __future__ import annotations

import torch

from biom3d.io import shared_batches


class Numbered(torch.utils.data.Dataset):
    """Item ``i``: a small image full of ``i`` and a uint8 mask full of ``i % 251``, so a batch says what it is."""

    def __len__(self) -> int:
        return 10**6

    def __getitem__(self, index: int) -> int:
        return index


class Kind(dict):
    """The type batches arrive as (io/batch-augment's CropBatch, here)."""


class Collate:
    """A picklable collate_fn: one batch of two tensors of different dtypes and sizes, sent through the ring."""

    def __call__(self, indices: list[int]):
        index = torch.tensor(indices)
        image = index.float().view(-1, 1, 1, 1).expand(-1, 2, 6, 5).contiguous()
        mask = (index % 251).to(torch.uint8).view(-1, 1, 1).expand(-1, 3, 7).contiguous()
        return shared_batches.share({"image": image, "mask": mask, "index": index}, Kind)


def _loader(workers: int, persistent: bool = True) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(Numbered(), batch_size=3, num_workers=workers, collate_fn=Collate(),
                                       persistent_workers=persistent and workers > 0)


def _intact(batch) -> bool:
    index = batch["index"]
    return bool((batch["image"] == index.float().view(-1, 1, 1, 1)).all()
                and (batch["mask"] == (index % 251).to(torch.uint8).view(-1, 1, 1)).all())


def test_held_batches_are_never_overwritten_and_dropped_ones_are_reused():
    """Every other batch kept to the end: a ring that reused buffers in turn, without asking the receiver, would
    have written later batches over them. The ones dropped come back as buffers used before."""
    before = shared_batches.stats()
    kept, seen = [], []
    for step, batch in zip(range(60), _loader(workers=2), strict=False):
        assert type(batch) is Kind and _intact(batch)
        seen += batch["index"].tolist()
        if step % 2 == 0:
            kept.append(batch)
    del batch
    assert seen == list(range(180))
    assert all(_intact(b) for b in kept)  # 30 held: more than both rings' 16 buffers, so some came unpooled
    after = shared_batches.stats()
    received = after["batches"] - before["batches"]
    assert 16 <= received < 60  # the rings' buffers, and PyTorch's own transport once they were all held
    assert after["reused"] - before["reused"] > 0
    del kept
    assert shared_batches.stats()["held"] == 0  # released once their last tensor went


def test_a_consumer_that_drops_each_batch_keeps_reusing_a_few_buffers():
    before = shared_batches.stats()
    for step, batch in zip(range(40), _loader(workers=2), strict=False):
        assert _intact(batch) and batch["index"][0] == 3 * step
    after = shared_batches.stats()
    assert after["batches"] - before["batches"] == 40  # none fell back to fresh segments
    # new buffers: the batches in flight and held per worker, not one per batch
    assert after["batches"] - before["batches"] - (after["reused"] - before["reused"]) <= 12


def test_in_the_main_process_the_batch_is_returned_as_it_is():
    image = torch.arange(6.0)
    batch = shared_batches.share({"image": image}, Kind)
    assert type(batch) is Kind and batch["image"] is image
    for _, batch in zip(range(3), _loader(workers=0), strict=False):
        assert type(batch) is Kind and _intact(batch)


def test_restarted_workers_send_their_own_tables_and_the_exited_ones_are_dropped():
    """A non-persistent loader starts new workers each epoch: each sends its own table, and the receiver lets go of
    the tables of workers gone once it holds nothing of theirs."""
    loader = _loader(workers=2, persistent=False)
    for _ in range(3):
        indices = []
        for batch in loader:
            assert _intact(batch)
            indices += batch["index"].tolist()
            if len(indices) >= 30:
                break
        del batch
        assert indices[:30] == list(range(30))
    assert shared_batches.stats()["tables"] <= 4  # this epoch's two, at most the previous epoch's two as well

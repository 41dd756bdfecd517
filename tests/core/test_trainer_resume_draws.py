"""A resumed run draws new training batches, not its first epochs' again: the loader's workers are seeded anew
from the start epoch (their RNG states are in no checkpoint), and what the training process draws (``on_device``
augmentation) continues the interrupted run's sequence exactly, its RNG being restored."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from biom3d.core.builtins.trainer import SegTrainer
from biom3d.core.config import TrainConfig
from biom3d.core.protocols import TrainJob

ITERS = 2


class NoiseItems(torch.utils.data.Dataset):
    """Items drawn from the RNG of whoever reads them: a loader worker, or the training process (no workers)."""

    def __init__(self, length: int):
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"image": torch.rand(1, 2, 2, 2), "mask": torch.zeros(2, 2, 2, dtype=torch.long)}


class Data:
    """SegmentationData; with ``on_device``, each batch also takes a value from the training process's RNG."""

    def __init__(self, on_device: bool):
        self.drawn: list[float] = []
        if on_device:
            self.on_device = self._on_device

    def train_dataset(self, length: int) -> NoiseItems:
        return NoiseItems(length)

    def _on_device(self, batch):
        value = torch.rand(())
        self.drawn.append(float(value))
        return {"image": batch["image"] + value, "mask": batch["mask"]}


def _fit(epochs: int, *, workers: int, on_device: bool, resume=None,
         seed: int | None = 5) -> tuple[SegTrainer, list[torch.Tensor], Data]:
    """Trains a 1x1x1 convolution; returns the trainer, the images it trained on (in order) and its data."""
    torch.manual_seed(123)  # the same initial weights in every call
    model = torch.nn.Conv3d(1, 1, 1)
    seen: list[torch.Tensor] = []
    model.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
    data = Data(on_device)
    cfg = TrainConfig(epochs=epochs, iters_per_epoch=ITERS, val_iters=0, batch_size=2, workers=workers, device="cpu",
                      seed=seed)
    job = TrainJob(model=model, loss=lambda out, target: out.mean(), metrics=[], data=data, callbacks=[], train=cfg,
                   run_dir=None, resume=resume)
    trainer = SegTrainer(None, SimpleNamespace(multilabel=False, num_classes=1))
    trainer.fit(job)
    return trainer, seen, data


def _epoch(images: list[torch.Tensor], index: int) -> torch.Tensor:
    return torch.cat(images[index * ITERS:(index + 1) * ITERS])


@pytest.mark.parametrize("workers", [1, 0])
def test_a_resumed_run_draws_new_batches(workers):
    _, whole, _ = _fit(4, workers=workers, on_device=False)
    first, before, _ = _fit(2, workers=workers, on_device=False)
    _, after, _ = _fit(4, workers=workers, on_device=False, resume=first.state_dict())
    assert len(after) == 2 * ITERS
    for done in range(2):  # not a replay of an epoch the run already trained on
        assert not torch.equal(_epoch(after, 0), _epoch(before, done))
    if workers == 0:  # read by the training process: its RNG was restored, so the run goes on exactly
        assert torch.equal(torch.cat(after), torch.cat(whole[2 * ITERS:]))


def test_on_device_draws_continue_the_interrupted_run():
    _, _, whole = _fit(4, workers=1, on_device=True)
    first, _, before = _fit(2, workers=1, on_device=True)
    _, _, after = _fit(4, workers=1, on_device=True, resume=first.state_dict())
    assert before.drawn == whole.drawn[:2 * ITERS]
    assert after.drawn == whole.drawn[2 * ITERS:]


@pytest.mark.parametrize("workers", [1, 0])
def test_unseeded_runs_draw_apart(workers):
    """``seed: null`` means unseeded: torch's generators start from one fixed seed unless told otherwise."""
    _, one, first = _fit(1, workers=workers, on_device=True, seed=None)
    _, other, second = _fit(1, workers=workers, on_device=True, seed=None)
    assert not torch.equal(torch.cat(one), torch.cat(other)) and first.drawn != second.drawn

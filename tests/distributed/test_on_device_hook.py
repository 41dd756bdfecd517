"""The trainer hands every training batch, once on the device, to the dataset's optional ``on_device`` hook
(batched augmentation on the GPU), without gradients, and trains on what it returns; validation does not."""

from __future__ import annotations

import torch


def test_training_batches_go_through_on_device_and_the_network_sees_its_result(prepared, tmp_path, monkeypatch):
    from biom3d.core.builder import Builder
    from biom3d.io.datasets import PatchData

    calls = []

    def on_device(self, batch):
        calls.append((tuple(batch["image"].shape), batch["image"].device.type, torch.is_grad_enabled()))
        return {"image": torch.full_like(batch["image"], 7.0), "mask": batch["mask"]}

    monkeypatch.setattr(PatchData, "on_device", on_device, raising=False)
    inputs: list[tuple[bool, torch.Tensor]] = []
    builder = Builder(prepared.config)
    patch = tuple(builder.config.patch_size)

    def record(module, args):
        x = args[0] if args else None
        if isinstance(x, torch.Tensor) and tuple(x.shape[1:]) == (1, *patch) and x.shape[0] == 2:
            inputs.append((module.training, x.detach().clone()))

    handle = torch.nn.modules.module.register_module_forward_pre_hook(record)
    try:
        builder.train(runs_dir=tmp_path)
    finally:
        handle.remove()
    train = builder.config.train
    assert calls == [((2, 1, *patch), "cpu", False)] * (train.epochs * train.iters_per_epoch)
    trained = [x for training, x in inputs if training]
    assert trained and all(bool((x == 7.0).all()) for x in trained)
    assert any(not training and not bool((x == 7.0).all()) for training, x in inputs)  # validation: as loaded

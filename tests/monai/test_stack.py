"""biom3d-core + biom3d-monai alone: a validated config builds a dataset, model, loss and metric that train."""

import torch

from biom3d.core.builder import Builder
from tests.monai.helpers import write_preprocessed


def test_config_to_training_steps(registry, tmp_path):
    write_preprocessed(tmp_path)
    raw = {
        "num_classes": 2,
        "patch_size": [16, 16, 16],
        "num_pools": [2, 3, 3],
        "data": {"preprocessed": str(tmp_path)},
        "train": {"seed": 3, "batch_size": 2},
        "dataset": {"name": "monai-dataset", "params": {"noise_prob": 0.5}},
        "model": {"name": "DynUNet", "params": {"base_features": 4, "deep_supervision": True, "deep_supr_num": 1}},
        "loss": "DiceCELoss",
        "metrics": ["DiceMetric", {"name": "hausdorff", "params": {"percentile": 95}}],
    }
    builder = Builder(raw, registry=registry)
    data, net, loss = builder.build("dataset"), builder.build("model"), builder.build("loss")
    dice, hd95 = builder.build("metrics")
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    loader = torch.utils.data.DataLoader(data.train_dataset(4), batch_size=2)
    for batch in loader:
        optimizer.zero_grad()
        value = loss(net(batch["image"]), batch["mask"])
        value.backward()
        optimizer.step()
        assert torch.isfinite(value)
    net.eval()
    val = next(iter(torch.utils.data.DataLoader(data.val_dataset(2), batch_size=2)))
    with torch.no_grad():
        logits = net(val["image"])
    assert dice.per_class(logits, val["mask"]).shape == (2,)
    assert torch.isfinite(hd95(logits, val["mask"]))

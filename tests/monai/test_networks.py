"""Every MONAI network builds from the run context and trains one step on a tiny input."""

import pytest
import torch

from biom3d.core.context import RunContext
from biom3d.monai.networks import DeepSupervisionList
from biom3d.monai.params import DynUNetParams, UNetParams

TINY = {
    "unet": ({"base_features": 4, "max_features": 16, "num_res_units": 1}, (32, 32, 32)),
    "basic-unet": ({"features": [4, 4, 8, 8, 16, 4]}, (32, 32, 32)),
    "dyn-unet": ({"base_features": 4, "max_features": 16}, (32, 32, 32)),
    "segresnet": ({"init_filters": 4, "num_groups": 2, "blocks_down": [1, 1, 1], "blocks_up": [1, 1]}, (32, 32, 32)),
    "unetr": ({"feature_size": 4, "hidden_size": 24, "mlp_dim": 24, "num_heads": 2}, (16, 16, 32)),
    # 32-divisible, and more than one voxel at the bottleneck for instance normalisation
    "swin-unetr": (
        {"feature_size": 12, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 1, 1], "window_size": 2},
        (32, 32, 64),
    ),
    "attention-unet": ({"base_features": 4, "max_features": 16}, (32, 32, 32)),
}


@pytest.mark.parametrize("name", list(TINY))
def test_forward_backward(registry, name):
    params, patch = TINY[name]
    ctx = RunContext(num_classes=2, in_channels=2, patch_size=patch, num_pools=(2, 3, 3))
    net = registry.resolve("model", name).build(params, ctx)
    x = torch.randn(1, 2, *patch)
    y = net(x)
    assert y.shape == (1, ctx.out_channels, *patch)
    y.float().mean().backward()
    grads = [p.grad for p in net.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_out_channels_follow_multilabel(registry):
    ctx = RunContext(num_classes=3, multilabel=True, patch_size=(16, 16, 16), num_pools=(2, 2, 2))
    net = registry.resolve("model", "UNet").build({"base_features": 4}, ctx)
    assert net(torch.randn(1, 1, 16, 16, 16)).shape == (1, 3, 16, 16, 16)


def test_dyn_unet_layout_follows_core_pooling():
    kernels, strides, filters = DynUNetParams(base_features=8, max_features=32).layout(RunContext(num_pools=(3, 5, 5)))
    assert strides == [1, (1, 2, 2), (2, 2, 2), (2, 2, 2), (2, 2, 2), (1, 2, 2)]
    assert filters == [8, 16, 32, 32, 32, 32] and kernels == [3] * 6
    channels, unet_strides = UNetParams(base_features=4).layout(RunContext(num_pools=(3, 5, 5)))
    assert unet_strides == strides[1:] and channels == [4, 8, 16, 32, 64, 128]
    assert UNetParams().layout(None) == ([16, 32, 64, 128, 256], [2, 2, 2, 2])


def test_dyn_unet_deep_supervision_gives_a_list_in_training_only(registry):
    ctx = RunContext(num_classes=1, patch_size=(16, 32, 32), num_pools=(2, 3, 3))
    net = registry.resolve("model", "DynUNet").build(
        {"base_features": 4, "deep_supervision": True, "deep_supr_num": 2}, ctx
    )
    assert isinstance(net, DeepSupervisionList)
    outs = net.train()(torch.randn(2, 1, 16, 32, 32))
    assert isinstance(outs, list) and len(outs) == 3 and all(o.shape == (2, 2, 16, 32, 32) for o in outs)
    loss = registry.resolve("metric", "dice-ce-loss").build({}, ctx)
    loss(outs, torch.randint(0, 2, (2, 16, 32, 32))).backward()
    with torch.no_grad():
        assert net.eval()(torch.randn(1, 1, 16, 32, 32)).shape == (1, 2, 16, 32, 32)


def test_unetr_needs_the_patch_size(registry):
    with pytest.raises(ValueError, match="patch_size"):
        registry.resolve("model", "unetr").build({"hidden_size": 24, "num_heads": 2}, RunContext(num_classes=1))

"""The instance norm + activation of the VGG blocks computes exactly what ``nn.InstanceNorm3d`` followed by an
in-place LeakyReLU computes, without the whole-tensor copies autograd added in backward (issue 16)."""

import copy

import pytest
import torch
from torch import nn

from biom3d.core.context import RunContext
from biom3d.models.blocks import ConvNormAct, InstanceNorm3d


def _graph_names(tensor: torch.Tensor) -> set[str]:
    """Names of every autograd node behind ``tensor``."""
    seen, todo, names = set(), [tensor.grad_fn], set()
    while todo:
        fn = todo.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        names.add(type(fn).__name__)
        todo += [f for f, _ in fn.next_functions]
    return names


def _with_stock_norms(net: nn.Module) -> nn.Module:
    """A copy of ``net`` whose instance norms are plain ``nn.InstanceNorm3d`` with the same weights."""
    net = copy.deepcopy(net)
    for module in list(net.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, InstanceNorm3d):
                stock = nn.InstanceNorm3d(child.num_features, affine=True)
                stock.load_state_dict(child.state_dict())
                setattr(module, name, stock)
    return net


def test_conv_norm_act_matches_stock_instance_norm_bit_for_bit_without_copy_slices():
    block = ConvNormAct(3, 5, 3, 1, "instance", nn.LeakyReLU(0.01, inplace=True))
    with torch.no_grad():
        block[1].weight.uniform_(0.5, 2)
        block[1].bias.uniform_(-1, 1)
    stock = _with_stock_norms(block)
    x = torch.randn(2, 3, 6, 7, 5) * 3 + 4
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = block(xa), stock(xb)
    assert "CopySlices" in _graph_names(yb)  # the stock composition: in-place activation on a view
    assert "CopySlices" not in _graph_names(ya)
    assert torch.equal(ya, yb)
    grad = torch.randn_like(ya)
    ya.backward(grad)
    yb.backward(grad)
    assert torch.equal(xa.grad, xb.grad)
    for p, q in zip(block.parameters(), stock.parameters(), strict=True):
        assert torch.equal(p.grad, q.grad)


def test_instance_norm_state_dict_and_one_voxel_error_are_the_stock_ones():
    norm = InstanceNorm3d(4, affine=True)
    assert isinstance(norm, nn.InstanceNorm3d)
    assert set(norm.state_dict()) == set(nn.InstanceNorm3d(4, affine=True).state_dict()) == {"weight", "bias"}
    with pytest.raises(ValueError, match="more than 1 spatial element"):
        norm.norm_act(torch.randn(2, 4, 1, 1, 1), nn.LeakyReLU())
    x = torch.randn(4, 3, 3, 3)  # unbatched input goes through the stock path
    assert torch.equal(norm.norm_act(x, nn.Identity()), nn.InstanceNorm3d(4, affine=True)(x))


def test_deep_supervision_training_step_gives_the_stock_loss_and_gradients(registry):
    ctx = RunContext(num_classes=1, patch_size=(16, 16, 16), num_pools=(2, 2, 2))
    params = {"deep_supervision": True, "base_features": 4, "max_features": 16}
    net = registry.resolve("model", "unet3d-vgg-deep").build(params, ctx).train()
    loss_fn = registry.resolve("metric", "deep-supervision").build({}, ctx)
    stock = _with_stock_norms(net).train()
    x = torch.randn(2, 1, 16, 16, 16)
    target = (torch.rand(2, 16, 16, 16) > 0.7).long()
    ours_loss, stock_loss = loss_fn(net(x), target), loss_fn(stock(x), target)
    assert torch.equal(ours_loss, stock_loss)
    ours_loss.backward()
    stock_loss.backward()
    for (name, p), (_, q) in zip(net.named_parameters(), stock.named_parameters(), strict=True):
        assert torch.equal(p.grad, q.grad), name

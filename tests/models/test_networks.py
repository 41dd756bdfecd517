"""Networks: dynamic strides, output sizes, deep-supervision outputs, gradients, tracing, encoders."""

import math
import warnings

import pytest
import torch

from biom3d.core.context import RunContext
from biom3d.core.geometry import pool_strides

SMALL = {"base_features": 4, "max_features": 16}
TINY_EFF = {"width_multiplier": 0.25, "depth_multiplier": 0.5}


def _build(registry, name, params=None, **ctx):
    return registry.resolve("model", name).build(params or {}, RunContext(**ctx))


@pytest.mark.parametrize(
    ("pools", "expected"),
    [
        ((3, 5, 5), [(1, 2, 2), (2, 2, 2), (2, 2, 2), (2, 2, 2), (1, 2, 2)]),
        ((0, 4, 4), [(1, 2, 2)] * 4),
        ((2, 2, 2), [(2, 2, 2)] * 2),
        ((1, 2, 4), [(1, 1, 2), (2, 2, 2), (1, 2, 2), (1, 1, 2)]),
        ((5, 5, 5), [(2, 2, 2)] * 5),
    ],
)
def test_encoder_strides_follow_auto_configuration(registry, pools, expected):
    net = _build(registry, "unet3d-vgg-deep", {**SMALL, "num_pools": list(pools)})
    assert net.encoder.strides == [(1, 1, 1), *expected]
    assert net.total_stride == tuple(2**p for p in pools)
    assert len(net.ups) == len(net.blocks) == max(pools)
    # the decoder undoes each stage with a transposed conv whose kernel is the stage's stride
    assert [tuple(up.stride) for up in net.ups] == expected[::-1]
    assert [tuple(up.kernel_size) for up in net.ups] == expected[::-1]


def test_pooling_comes_from_params_then_context_then_default(registry):
    assert _build(registry, "unet3d-vgg-deep", SMALL, num_pools=(1, 2, 2)).total_stride == (2, 4, 4)
    assert _build(registry, "unet3d-vgg-deep", {**SMALL, "num_pools": [0, 1, 1]}, num_pools=(1, 2, 2)).total_stride == (
        1,
        2,
        2,
    )
    assert _build(registry, "unet3d-vgg-deep", SMALL).total_stride == (32, 32, 32)


def test_channels_double_per_stage_up_to_the_cap(registry):
    net = _build(registry, "unet3d-vgg-deep", num_pools=(5, 5, 5))
    assert net.encoder.channels == [32, 64, 128, 256, 320, 320]
    net = _build(registry, "unet3d-vgg-deep", {"base_features": 8, "max_features": 40}, num_pools=(3, 3, 3))
    assert net.encoder.channels == [8, 16, 32, 40]


def test_vgg_blocks_use_kernel_3_instance_norm_and_leaky_relu_by_default(registry):
    net = _build(registry, "unet3d-vgg-deep", SMALL, num_pools=(1, 3, 3))
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv3d) and m.kernel_size != (1, 1, 1)]
    assert convs and all(m.kernel_size == (3, 3, 3) for m in convs)  # 3 even where a stage's stride is 1
    assert any(isinstance(m, torch.nn.InstanceNorm3d) and m.affine for m in net.modules())
    slopes = {m.negative_slope for m in net.modules() if isinstance(m, torch.nn.LeakyReLU)}
    assert slopes == {0.01}


@pytest.mark.parametrize(
    ("pools", "shapes"),
    [
        ((3, 5, 5), [(16, 32, 32), (8, 64, 96)]),
        ((0, 4, 4), [(3, 32, 32), (5, 16, 48), (1, 16, 32)]),
        ((2, 2, 2), [(8, 8, 4), (12, 20, 8)]),
        ((1, 3, 2), [(4, 16, 8)]),
    ],
)
def test_output_size_equals_input_size_for_multiples_of_the_total_stride(registry, pools, shapes):
    # instance norm needs 2+ voxels in the bottleneck, so each shape is at least twice the total stride somewhere
    net = _build(registry, "unet3d-vgg-deep", {**SMALL, "num_pools": list(pools)}, num_classes=2).eval()
    with torch.no_grad():
        for shape in shapes:
            assert all(s % t == 0 for s, t in zip(shape, net.total_stride, strict=True))
            assert net(torch.randn(1, 1, *shape)).shape == (1, 3, *shape)


def test_one_total_stride_is_enough_with_batch_norm(registry):
    net = _build(registry, "unet3d-vgg-deep", {**SMALL, "num_pools": [3, 5, 5], "norm": "batch"}).eval()
    with torch.no_grad():
        assert net(torch.randn(1, 1, 8, 32, 32)).shape == (1, 2, 8, 32, 32)  # one-voxel bottleneck


def test_channels_come_from_the_context_unless_overridden(registry):
    x = torch.randn(1, 2, 8, 8, 8)
    with torch.no_grad():
        softmax = _build(registry, "unet3d-vgg-deep", SMALL, num_classes=3, in_channels=2, num_pools=(2, 2, 2)).eval()
        assert softmax(x).shape[1] == 4
        multi = _build(
            registry, "unet3d-vgg-deep", SMALL, num_classes=3, in_channels=2, multilabel=True, num_pools=(2, 2, 2)
        )
        assert multi.eval()(x).shape[1] == 3
        forced = _build(
            registry,
            "unet3d-vgg-deep",
            {**SMALL, "in_channels": 1, "out_channels": 7},
            in_channels=2,
            num_pools=(2, 2, 2),
        )
        assert forced.eval()(x[:, :1]).shape[1] == 7


def test_deep_supervision_outputs_full_resolution_first_then_each_lower_stage(registry):
    net = _build(registry, "UNet3DVGGDeep", {**SMALL, "deep_supervision": True}, num_classes=1, num_pools=(3, 5, 5))
    x = torch.randn(2, 1, 16, 64, 64)
    outs = net.train()(x)
    assert isinstance(outs, list) and len(outs) == 5  # one per decoder stage
    assert [tuple(o.shape[2:]) for o in outs] == [(16, 64, 64), (16, 32, 32), (8, 16, 16), (4, 8, 8), (2, 4, 4)]
    assert all(o.shape[:2] == (2, 2) for o in outs)
    with torch.no_grad():
        single = net.eval()(x)
    assert isinstance(single, torch.Tensor) and single.shape == (2, 2, 16, 64, 64)
    # the eval output is the training output's first element (same weights, instance norm has no running stats)
    net.train()
    with torch.no_grad():
        assert torch.allclose(net(x)[0], single, atol=1e-5)


def test_without_deep_supervision_training_returns_one_tensor_and_has_no_extra_heads(registry):
    net = _build(registry, "unet3d-vgg-deep", SMALL, num_pools=(2, 2, 2))
    assert len(net.aux_heads) == 0
    assert isinstance(net.train()(torch.randn(1, 1, 8, 8, 8)), torch.Tensor)


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("unet3d-vgg-deep", {**SMALL, "num_pools": [3, 3, 3]}),
        ("unet3d-vgg-deep", {**SMALL, "num_pools": [2, 3, 3], "deep_supervision": True}),
        ("unet3d-vgg-deep", {**SMALL, "num_pools": [3, 3, 3], "norm": "batch"}),
        ("unet3d-vgg-deep", {**SMALL, "num_pools": [3, 3, 3], "norm": "group"}),
        ("unet3d-vgg-deep", {**TINY_EFF, "num_pools": [3, 3, 3], "encoder": "efficientnet-b0"}),
        ("effunet3d", {**TINY_EFF, "num_pools": [3, 3, 3]}),
        ("EffUNet", {**TINY_EFF, "num_pools": [2, 3, 3], "deep_supervision": True}),
    ],
)
def test_forward_backward_reaches_every_parameter(registry, name, params):
    net = _build(registry, name, params, num_classes=2).train()
    x = torch.randn(2, 1, 32, 32, 32)
    out = net(x)
    outs = out if isinstance(out, list) else [out]
    assert outs[0].shape == (2, 3, 32, 32, 32)
    sum(o.float().pow(2).mean() for o in outs).backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert missing == []


def test_effunet_uses_an_efficientnet_encoder_with_mbconv_and_squeeze_excitation(registry):
    from biom3d.models.blocks import MBConv, SqueezeExcite
    from biom3d.models.encoders import EfficientNetEncoder

    net = _build(registry, "effunet3d", {"num_pools": [5, 5, 5]})
    assert isinstance(net.encoder, EfficientNetEncoder)
    assert net.encoder.channels == [32, 16, 24, 40, 112, 320]  # B0 widths, stem kept at full resolution
    blocks = [m for m in net.encoder.modules() if isinstance(m, MBConv)]
    assert len(blocks) == 16  # B0: 1 + 2 + 2 + 3 + 3 + 4 + 1
    assert all(any(isinstance(c, SqueezeExcite) for c in b.modules()) for b in blocks)
    depthwise = [m for m in net.encoder.modules() if isinstance(m, torch.nn.Conv3d) and m.groups > 1]
    assert len(depthwise) == 16 and all(m.groups == m.in_channels == m.out_channels for m in depthwise)


def test_efficientnet_compound_scaling_widens_and_deepens():
    from biom3d.models.blocks import MBConv
    from biom3d.models.encoders import EfficientNetEncoder, _round_filters

    assert [_round_filters(32, w) for w in (1.0, 1.1, 1.2, 1.4, 2.0)] == [32, 32, 40, 48, 64]  # published stems
    strides = pool_strides((3, 3, 3))
    b0 = EfficientNetEncoder(1, strides, 1.0, 1.0)
    b3 = EfficientNetEncoder(1, strides, 1.2, 1.4)
    assert b3.channels == [40, 24, 32, 48]
    assert sum(isinstance(m, MBConv) for m in b3.modules()) > sum(isinstance(m, MBConv) for m in b0.modules())


def test_efficientnet_encoder_goes_deeper_than_b0_levels(registry):
    net = _build(registry, "effunet3d", {**TINY_EFF, "num_pools": [6, 5, 1]}).eval()
    assert len(net.encoder.channels) == 7 and net.total_stride == (64, 32, 2)
    with torch.no_grad():
        assert net(torch.randn(1, 1, 64, 64, 2)).shape == (1, 2, 64, 64, 2)


TRACEABLE = [
    ("unet3d-vgg-deep", {**SMALL, "num_pools": [1, 2, 2], "deep_supervision": True}),
    ("effunet3d", {**TINY_EFF, "num_pools": [1, 2, 2], "deep_supervision": True}),
]


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::torch.jit.TracerWarning")
@pytest.mark.parametrize(("name", "params"), TRACEABLE)
def test_eval_network_traces_with_torch_jit(registry, name, params):
    net = _build(registry, name, params).eval()
    x = torch.randn(1, 1, 4, 8, 8)
    with torch.no_grad(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        traced = torch.jit.trace(net, x)
        y = torch.randn(1, 1, 6, 16, 12)
        assert torch.allclose(traced(y), net(y), atol=1e-5)  # shapes are not baked into the trace
    ours = [w for w in caught if issubclass(w.category, torch.jit.TracerWarning) and "biom3d" in w.filename]
    assert ours == []  # no data-dependent Python control flow in our forward passes


@pytest.mark.parametrize(("name", "params"), TRACEABLE)
def test_eval_network_exports_with_torch_export(registry, name, params):
    net = _build(registry, name, params).eval()
    x = torch.randn(1, 1, 4, 8, 8)
    exported = torch.export.export(net, (x,))
    with torch.no_grad():
        assert torch.allclose(exported.module()(x), net(x), atol=1e-5)


@pytest.mark.parametrize("encoder", ["vgg", "efficientnet-b0"])
def test_vgg3d_classifies_whole_volumes(registry, encoder):
    params = {**(SMALL if encoder == "vgg" else TINY_EFF), "encoder": encoder, "num_pools": [2, 3, 3]}
    net = _build(registry, "VGG3D", params, num_classes=4).train()
    out = net(torch.randn(3, 1, 8, 16, 16))
    assert out.shape == (3, 4)
    out.sum().backward()
    assert all(p.grad is not None for p in net.parameters())
    assert _build(registry, "vgg3d", {**params, "num_classes": 2})(torch.randn(1, 1, 8, 16, 16)).shape == (1, 2)


def test_default_unet_size_matches_nnunet(registry):
    net = _build(registry, "unet3d-vgg-deep", num_pools=(5, 5, 5))
    n = sum(p.numel() for p in net.parameters())
    assert 30e6 < n < 32e6  # nnU-Net's 3d_fullres plain U-Net with six stages has ~31M weights
    assert math.prod(net.total_stride) == 32**3

"""Convolutional building blocks shared by the encoders and the decoder."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

Stride = int | Sequence[int]


class VGGBlock(nn.Sequential):
    """(conv 3x3x3 - norm - LeakyReLU) x 2; the first conv carries the stage's stride (nnU-Net's pooling)."""

    def __init__(self, cin: int, cout: int, stride: Stride = 1, norm: str = "instance", negative_slope: float = 0.01):
        super().__init__(
            ConvNormAct(cin, cout, 3, stride, norm, nn.LeakyReLU(negative_slope, inplace=True)),
            ConvNormAct(cout, cout, 3, 1, norm, nn.LeakyReLU(negative_slope, inplace=True)),
        )


class ConvNormAct(nn.Sequential):
    """A 3D convolution (same padding), a normalisation and an optional activation."""

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel: int = 3,
        stride: Stride = 1,
        norm: str = "instance",
        act: nn.Module | None = None,
        groups: int = 1,
    ):
        layers: list[nn.Module] = [
            nn.Conv3d(cin, cout, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=True),
            norm_layer(norm, cout),
        ]
        if act is not None:
            layers.append(act)
        super().__init__(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv, norm, *act = self
        x = conv(x)
        if not act:
            return norm(x)
        return norm.norm_act(x, act[0]) if isinstance(norm, InstanceNorm3d) else act[0](norm(x))


class MBConv(nn.Module):
    """EfficientNet's inverted residual: expand 1x1 - depthwise kxk (strided) - squeeze-excitation - project 1x1.

    The residual connection is kept only when the block preserves shape (stride 1, same channels).
    """

    def __init__(
        self, cin: int, cout: int, kernel: int, stride: Stride, expand: int, norm: str, se_ratio: float = 0.25
    ):
        super().__init__()
        mid = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(ConvNormAct(cin, mid, 1, 1, norm, nn.SiLU(inplace=True)))
        layers += [
            ConvNormAct(mid, mid, kernel, stride, norm, nn.SiLU(inplace=True), groups=mid),
            SqueezeExcite(mid, max(1, int(cin * se_ratio))),
            ConvNormAct(mid, cout, 1, 1, norm, None),
        ]
        self.body = nn.Sequential(*layers)
        strides = (stride,) * 3 if isinstance(stride, int) else tuple(stride)
        self.residual = cin == cout and all(s == 1 for s in strides)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        return out + x if self.residual else out


class SqueezeExcite(nn.Module):
    """Channel attention: global average pool, bottleneck, sigmoid gate."""

    def __init__(self, channels: int, squeezed: int):
        super().__init__()
        self.gate = nn.Sequential(
            nn.AdaptiveAvgPool3d(1),
            nn.Conv3d(channels, squeezed, 1),
            nn.SiLU(inplace=True),
            nn.Conv3d(squeezed, channels, 1),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(x)


def norm_layer(kind: str, channels: int) -> nn.Module:
    """Instance norm (affine, nnU-Net's default), batch norm, or group norm with up to 8 groups.

    Instance norm needs more than one voxel per feature map: an input exactly one total stride wide leaves a
    one-voxel bottleneck, which it refuses (auto-configuration keeps at least 4 voxels per axis there).
    """
    if kind == "instance":
        return InstanceNorm3d(channels, affine=True)
    if kind == "batch":
        return nn.BatchNorm3d(channels)
    if kind == "group":
        return nn.GroupNorm(math.gcd(channels, 8), channels)
    raise ValueError(f"unknown norm {kind!r}; expected 'instance', 'batch' or 'group'")


class InstanceNorm3d(nn.InstanceNorm3d):
    """``nn.InstanceNorm3d`` (same parameters, state-dict keys and arithmetic) that can apply the activation
    which follows it *before* its result takes the input's shape back (:meth:`norm_act`).

    Why: ``instance_norm`` is a batch norm over a ``(1, B*C, ...)`` reshape and returns a *view* of that batch
    norm's output. An in-place LeakyReLU on that view makes autograd rebase the graph (``CopySlices``): in
    backward it clones and copies the whole activation per norm layer. At a 96x112x96 patch that was ~6 s of
    copies (``aten::copy_``, ``CopySlices``) and ~1 GB of fresh pages per CPU training step. Activating the
    batch norm's own output, then viewing it, runs the very same kernels without those copies.
    """

    def norm_act(self, x: torch.Tensor, act: nn.Module) -> torch.Tensor:
        """``act(self(x))`` computed as ``at::instance_norm`` does, the activation applied before the view."""
        stock = x.dim() != 5 or self.track_running_stats or not torch.is_grad_enabled() or torch.jit.is_tracing()
        if stock:  # unbatched input, running statistics, no autograd graph (inference, export, trace)
            return act(self(x))
        if math.prod(x.shape[2:]) == 1:  # F.instance_norm's check (a one-voxel map has no variance)
            raise ValueError(f"Expected more than 1 spatial element when training, got input size {x.size()}")
        b, c = x.shape[:2]
        weight = None if self.weight is None else self.weight.repeat(b)
        bias = None if self.bias is None else self.bias.repeat(b)
        momentum = 0.0 if self.momentum is None else self.momentum
        y = torch.batch_norm(x.contiguous().view(1, b * c, *x.shape[2:]), weight, bias, None, None, True, momentum,
                             self.eps, torch.backends.cudnn.enabled)
        return act(y).view(x.shape)


def init_weights(module: nn.Module, negative_slope: float = 0.01) -> None:
    """He initialisation for LeakyReLU networks (nnU-Net's choice); zero biases."""
    for m in module.modules():
        if isinstance(m, nn.Conv3d | nn.ConvTranspose3d):
            nn.init.kaiming_normal_(m.weight, a=negative_slope)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

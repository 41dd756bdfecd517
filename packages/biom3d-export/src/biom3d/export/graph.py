"""A run's network as a graph: TorchScript (``torch.jit.trace``) and ONNX, each checked against the network.

What gets exported is :class:`Probabilities`: the network in eval mode, its first output when it returns
several (deep-supervision heads), then softmax (or sigmoid for multi-label runs), so every consumer gets
probabilities. Tracing records one path through ``forward``; Python control flow that depends on the data is
frozen into the graph without an error (a TracerWarning at most, and the paper's U-Net emits harmless ones
for shape checks). So each graph is *verified*: it must give the network's outputs on a second input with
other values and another batch size. A graph that does not is refused, naming the component and why.

Spatial axes are dynamic when the graph also gives the network's output at a second size (the patch plus
one total stride per axis); otherwise the export is fixed to the patch size, which is all the predictor feeds
it anyway. An ONNX graph whose batch axis does not export (an op whose ONNX form needs static sizes, e.g. a
training-mode batch norm over a reshape that involves the batch) is exported with batch 1, and run one sample
at a time.
"""

from __future__ import annotations

import contextlib
import io
import math
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from biom3d.core.errors import InputError

TOLERANCE = 1e-3  # on probabilities: float reorderings give ~1e-6, a frozen wrong branch far more
DEFAULT_OPSET = 17  # ONNX Runtime >= 1.12, deepImageJ/JDLL and most runtimes read it


class ExportError(InputError):
    """The run's network cannot be exported to a format; the message names the component and why."""


class Probabilities(torch.nn.Module):
    """``net`` returning probabilities: first output of a list/tuple, then softmax over channels or sigmoid.
    Its state-dict keys are the network's prefixed with ``net.``."""

    def __init__(self, net: torch.nn.Module, activation: str = "softmax"):
        super().__init__()
        if activation not in ("softmax", "sigmoid"):
            raise ValueError(f"activation must be softmax or sigmoid, not {activation!r}")
        self.net = net
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        if isinstance(out, list | tuple):
            out = out[0]
        return torch.sigmoid(out) if self.activation == "sigmoid" else torch.softmax(out, dim=1)


@dataclass
class Probe:
    """The inputs a graph is checked on, and the network's own outputs on them."""

    patch: tuple[int, ...]
    first: torch.Tensor  # (1, C, *patch), mean +0.5: traced on this one
    second: torch.Tensor  # (2, C, *patch), mean -0.5: other values and batch size
    expected: torch.Tensor  # the network on ``second``
    larger: torch.Tensor | None = None  # (1, C, *patch + stride): only when the network keeps that size
    expected_larger: torch.Tensor | None = None


@dataclass
class Graph:
    """An exported graph, serialised, with what its verification found."""

    data: bytes
    dynamic: bool  # spatial axes of any size ``patch + n * stride``; else the patch only
    max_diff: float  # on the verification input, against the network
    notes: list[str] = field(default_factory=list)
    batch: int | None = None  # a fixed batch size (ONNX graphs whose batch axis does not export), else None


def probe(model: torch.nn.Module, patch: Sequence[int], in_channels: int, stride: Sequence[int] | None,
          component: str) -> Probe:
    """Inputs (seeded) and the network's outputs on them; the larger size only if the network maps it to itself."""
    gen = torch.Generator().manual_seed(0)
    patch = tuple(int(p) for p in patch)
    first = torch.randn(1, in_channels, *patch, generator=gen) + 0.5
    second = torch.randn(2, in_channels, *patch, generator=gen) - 0.5
    with torch.no_grad():
        try:
            expected = model(second)
        except Exception as exc:
            raise ExportError(f"network '{component}' fails on a (2, {in_channels}, {', '.join(map(str, patch))}) "
                              f"input before any export: {_first_line(exc)}") from exc
        result = Probe(patch, first, second, expected)
        if stride:
            size = tuple(p + s for p, s in zip(patch, stride, strict=True))
            larger = torch.randn(1, in_channels, *size, generator=gen)
            try:
                out = model(larger)
            except Exception:  # sizes other than the patch are not supported: a fixed-size export
                return result
            if tuple(out.shape[2:]) == size:
                result.larger, result.expected_larger = larger, out
    return result


def torchscript(model: torch.nn.Module, p: Probe, component: str) -> Graph:
    """Trace ``model`` at the patch size and check the trace; a trace that differs from the network is refused."""
    with _collected() as notes:
        try:
            traced = torch.jit.trace(model, p.first, check_trace=False)
        except Exception as exc:
            raise ExportError(f"network '{component}' cannot be exported to TorchScript: torch.jit.trace "
                              f"refused it: {_first_line(exc)}") from exc
    run = _torch_runner(traced)
    diff = _verify(run, p, component, "TorchScript", notes)
    dynamic = _dynamic(run, p)
    buffer = io.BytesIO()
    with warnings.catch_warnings():  # deprecated in torch 2.13; still what bioimage.io and deepImageJ read
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(traced, buffer)
    return Graph(buffer.getvalue(), dynamic, diff, notes)


def onnx(model: torch.nn.Module, p: Probe, component: str, opset: int = DEFAULT_OPSET) -> Graph:
    """Export with dynamic batch and spatial axes, checked with ONNX Runtime; where they do not export or do not
    check out, with the spatial axes fixed to the patch, then with the batch fixed to 1 too (ONNX Runtime then
    runs a batch one sample at a time). A graph that differs from the network is refused."""
    attempts = [{0: "batch"}, {}]
    if p.larger is not None:
        attempts.insert(0, {0: "batch", 2: "z", 3: "y", 4: "x"})
    failures = []
    for axes in attempts:
        try:
            data, notes = _onnx_bytes(model, p, component, opset, axes)
        except ExportError as exc:
            failures.append(f"{_axes_text(axes)}: {str(exc).split(': ', 1)[-1]}")
            continue
        run = _onnx_runner(data, component)
        diff = _verify(run, p, component, "ONNX", notes)
        if 2 in axes and not _dynamic(run, p):
            failures.append(f"{_axes_text(axes)}: wrong at another size")
            continue
        if failures:
            notes = [f"exported with {_axes_text(axes)} ({'; '.join(failures)})", *notes]
        return Graph(data, 2 in axes, diff, notes, batch=None if 0 in axes else 1)
    raise ExportError(f"network '{component}' cannot be exported to ONNX (opset {opset}): {'; '.join(failures)}")


def stride_of(model: torch.nn.Module, num_pools: Sequence[int] | None) -> tuple[int, ...] | None:
    """What input sizes must be multiples of: the network's ``total_stride`` if it says, else the product of
    the run's pooling kernels per axis, else None (unknown: the export stays at the patch size)."""
    stride = getattr(model, "total_stride", None)
    if stride is not None:
        return tuple(int(s) for s in stride)
    if not num_pools:
        return None
    from biom3d.core.geometry import pool_strides

    kernels = pool_strides(list(num_pools))
    return tuple(math.prod(k[a] for k in kernels) for a in range(len(num_pools)))


# -- helpers -----------------------------------------------------------------------------------------------
def _onnx_bytes(model, p: Probe, component: str, opset: int, axes: dict[int, str]) -> tuple[bytes, list[str]]:
    buffer = io.BytesIO()
    with _collected() as notes:
        try:
            torch.onnx.export(model, (p.first,), buffer, dynamo=False, opset_version=opset, input_names=["input"],
                              output_names=["output"], dynamic_axes={"input": axes, "output": axes},
                              do_constant_folding=True)
        except Exception as exc:
            raise ExportError(f"network '{component}' cannot be exported to ONNX (opset {opset}): "
                              f"{_first_line(exc)}") from exc
    return buffer.getvalue(), notes


def _onnx_runner(data: bytes, component: str):
    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.log_severity_level = 4  # a size the graph does not take is an answer here, not an error to print
    try:
        session = ort.InferenceSession(data, sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ExportError(f"network '{component}': ONNX Runtime cannot load its ONNX export: {_first_line(exc)}") from exc
    batch = session.get_inputs()[0].shape[0]
    step = batch if isinstance(batch, int) else None

    def run(x: torch.Tensor) -> torch.Tensor:
        chunks = x.split(step) if step else [x]
        outs = [session.run(None, {"input": np.ascontiguousarray(c.numpy())})[0] for c in chunks]
        return torch.from_numpy(np.concatenate(outs))

    return run


def _torch_runner(module):
    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return module(x)

    return run


def _verify(run, p: Probe, component: str, fmt: str, notes: list[str]) -> float:
    """Max |graph - network| on the second input; beyond :data:`TOLERANCE`, an ExportError that says why."""
    try:
        out = run(p.second)
    except Exception as exc:
        raise ExportError(f"network '{component}' cannot be exported to {fmt}: the exported graph fails on a batch "
                          f"of 2 ({_first_line(exc)}); its forward depends on the input's batch size") from exc
    if tuple(out.shape) != tuple(p.expected.shape):
        raise ExportError(f"network '{component}' cannot be exported to {fmt}: the graph gives shape "
                          f"{tuple(out.shape)} where the network gives {tuple(p.expected.shape)}")
    diff = float((out - p.expected).abs().max())
    if not diff <= TOLERANCE:
        hint = f" (the tracer warned: {notes[0]})" if notes else ""
        raise ExportError(f"network '{component}' cannot be exported to {fmt}: its graph differs from the network "
                          f"by {diff:.3g} on another input: its forward has Python control flow that depends on the "
                          f"input's values, which a traced graph freezes{hint}. Make forward data-independent "
                          "(torch.where instead of if on tensor values), or predict from the run folder")
    return diff


def _axes_text(axes: dict[int, str]) -> str:
    return f"dynamic {', '.join(axes.values())} axes" if axes else "fixed shapes"


def _dynamic(run, p: Probe) -> bool:
    if p.larger is None:
        return False
    try:
        out = run(p.larger)
    except Exception:
        return False
    return tuple(out.shape) == tuple(p.expected_larger.shape) and float(
        (out - p.expected_larger).abs().max()) <= TOLERANCE


@contextlib.contextmanager
def _collected() -> Iterator[list[str]]:
    """Warnings raised inside, kept (the tracer's, first lines, once each) instead of shown."""
    notes: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield notes
    for w in caught:
        text = _first_line(w.message)
        if issubclass(w.category, torch.jit.TracerWarning) and text not in notes:
            notes.append(text)


def _first_line(exc: Any) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]

"""The architecture of a biom3d package's ``pytorch_state_dict`` weights, as bioimage.io loads it::

    weights:
      pytorch_state_dict:
        architecture: {import_from: biom3d.export.architecture, callable: build, kwargs: {component, params, ...}}

A consumer (bioimageio.core) calls ``build(**kwargs)`` and loads the state dict into what it returns. The
network is built the way the run built it, through biom3d's registry, so this needs biom3d-core, the plugin
that provides the network (e.g. biom3d-models for the paper's U-Net) and this distribution installed (the
package's ``environment.yaml`` lists them). The TorchScript and ONNX weights of the same package need none.
"""

from __future__ import annotations

from typing import Any


def build(component: str, params: dict[str, Any], context: dict[str, Any], activation: str = "softmax"):
    """The run's network in eval mode, returning probabilities (state-dict keys ``net.<the network's>``)."""
    from biom3d.core.context import RunContext
    from biom3d.core.discovery import get_registry
    from biom3d.export.graph import Probabilities

    ctx = RunContext(**{k: tuple(v) if isinstance(v, list) else v for k, v in context.items()})
    network = get_registry().resolve("model", component).build(params, ctx)
    return Probabilities(network, activation).eval()

"""Stand-ins for default-config components that other distributions provide, so core tests need none of them."""

from biom3d.core import hookimpl
from biom3d.core.specs import (
    DatasetSpec,
)


def _noop(params, ctx):
    return None


@hookimpl
def biom3d_datasets():
    yield DatasetSpec(name="patch-dataset", target=_noop)


@hookimpl
def biom3d_models():
    from biom3d.core.specs import ModelSpec

    yield ModelSpec(name="unet3d-vgg-deep", target=_noop)

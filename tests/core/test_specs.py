import pytest
from pydantic import BaseModel, ConfigDict

from biom3d.core.errors import SpecError
from biom3d.core.specs import KINDS, MetricSpec, ModelSpec, NoParams, ReaderSpec


class Loose(BaseModel):
    x: int = 1


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")
    x: int = 1


def test_valid_spec_is_frozen_and_lazy():
    spec = ModelSpec(name="unet3d-vgg-deep", target="no.such.module:build", aliases=["UNet"], params=Strict)
    assert spec.aliases == ("UNet",)
    assert spec.names == ("unet3d-vgg-deep", "UNet")
    with pytest.raises(AttributeError):
        spec.name = "other"  # type: ignore[misc]
    with pytest.raises(ModuleNotFoundError):
        spec.load()  # the target is only imported on demand


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"name": "UNet", "target": "a.b:c"}, "must match"),
        ({"name": "-x", "target": "a.b:c"}, "must match"),
        ({"name": "ok", "target": "a.b.c"}, "pkg.module:attr"),
        ({"name": "ok", "target": 42}, "callable"),
        ({"name": "ok", "target": "a:b", "params": dict}, "pydantic model"),
        ({"name": "ok", "target": "a:b", "params": Loose}, "extra='forbid'"),
        ({"name": "ok", "target": "a:b", "aliases": "Alias"}, "tuple"),
    ],
)
def test_bad_specs_are_rejected(kwargs, message):
    with pytest.raises(SpecError, match=message):
        ModelSpec(**kwargs)


def test_metric_roles_and_reader_suffixes():
    assert MetricSpec(name="dice", target="a:b", roles={"metric", "loss"}).roles == frozenset({"metric", "loss"})
    with pytest.raises(SpecError, match="subset"):
        MetricSpec(name="dice", target="a:b", roles={"score"})
    reader = ReaderSpec(name="nifti", target="a:b", suffixes=(".NII.GZ", ".nii"))
    assert reader.suffixes == (".nii.gz", ".nii")
    assert reader.matches("Case_01.nii.gz") == ".nii.gz"
    assert reader.matches("case.tif") is None
    with pytest.raises(SpecError, match="directory=True"):
        ReaderSpec(name="nothing", target="a:b")
    with pytest.raises(SpecError, match="start with"):
        ReaderSpec(name="bad", target="a:b", suffixes=("tif",))


def test_eleven_kinds_with_their_hooks():
    assert len(KINDS) == 11
    assert {k.hook for k in KINDS.values()} == {
        "biom3d_preprocessors", "biom3d_datasets", "biom3d_models", "biom3d_metrics", "biom3d_trainers",
        "biom3d_predictors", "biom3d_postprocessors", "biom3d_callbacks", "biom3d_readers", "biom3d_writers",
        "biom3d_stacks",
    }
    assert NoParams.model_config["extra"] == "forbid"

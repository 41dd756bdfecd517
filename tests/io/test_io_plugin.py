"""The io plugin as the registry sees it: specs, suffix choice, and a light entry module."""

from __future__ import annotations

import subprocess
import sys

import pytest
from pydantic import ValidationError

import biom3d.io.plugin as io_plugin


@pytest.fixture
def registry(biom3d_plugins):
    return biom3d_plugins.register(io_plugin, name="io")


@pytest.mark.parametrize(
    ("name", "reader"),
    [
        ("a.ome.tif", "io/ome-tiff"),
        ("a.OME.TIFF", "io/ome-tiff"),
        ("a.tif", "io/tiff"),
        ("a.tiff", "io/tiff"),
        ("a.nii.gz", "io/sitk"),
        ("a.nii", "io/sitk"),
        ("a.mha", "io/sitk"),
        ("a.nrrd", "io/sitk"),
        ("a.npy", "io/npy"),
    ],
)
def test_registry_picks_reader_and_writer_by_suffix(registry, name, reader):
    assert registry.reader_for(name).qid == reader
    assert registry.writer_for(name).qid == reader


def test_registry_picks_dicom_for_a_folder(registry, tmp_path):
    assert registry.reader_for(tmp_path).qid == "io/dicom"


def test_specs_have_summaries_and_strict_params(registry):
    comps = [c for c in registry.components() if c.plugin.name == "io"]
    assert {c.kind for c in comps} == {"reader", "writer", "dataset"}
    assert all(c.spec.summary for c in comps)
    for c in comps:
        for field in c.spec.params.model_fields.values():
            assert field.description
    with pytest.raises(ValidationError):
        registry.writer_for("a.tif").validate_params({"overwrite": True, "overwite": True})


def test_plugin_module_is_light():
    code = (
        "import biom3d.io.plugin, sys; "
        "heavy = {'tifffile', 'SimpleITK', 'numpy', 'torch'} & set(sys.modules); assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)

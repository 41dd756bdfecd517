import pytest

from biom3d.core.discovery import get_registry
from biom3d.core.registry import ResolutionError
from tests.core import sample_plugin


def test_fixture_isolates_and_registers(biom3d_plugins):
    assert set(biom3d_plugins.registry.plugins) == {"core"}
    reg = biom3d_plugins.register(sample_plugin, name="sample")
    assert get_registry() is reg  # the process-wide registry for this test
    assert reg.resolve("model", "net").qid == "sample/net"
    assert reg.resolve("model", "Net3D").qid == "sample/net"
    assert reg.resolve("model", "sample/Net3D").qid == "sample/net"


def test_reader_choice_longest_suffix_then_priority(biom3d_plugins, tmp_path):
    reg = biom3d_plugins.register(sample_plugin, name="sample")
    assert reg.reader_for(tmp_path / "a.ome.tif").qid == "sample/ome-tiff"  # longest suffix wins
    assert reg.reader_for(tmp_path / "a.TIF").qid == "sample/tiff-fast"  # same suffix: priority
    assert reg.reader_for(tmp_path / "a.tiff").qid == "sample/tiff"
    assert reg.reader_for(tmp_path).qid == "sample/dicom"  # folders go to directory readers
    with pytest.raises(ResolutionError, match="no reader for .*'.nrrd' files.*known suffixes: .ome.tif"):
        reg.reader_for(tmp_path / "x.nrrd")


def test_unknown_kind_is_a_programming_error(biom3d_plugins):
    with pytest.raises(ValueError, match="unknown component kind"):
        biom3d_plugins.registry.components("modle")


def test_qualified_id_of_missing_plugin(biom3d_plugins):
    reg = biom3d_plugins.register(sample_plugin, name="sample")
    with pytest.raises(ResolutionError, match="unknown model 'acme/net'. Did you mean: 'sample/net'"):
        reg.resolve("model", "acme/net")

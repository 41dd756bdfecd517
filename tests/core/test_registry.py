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
    with pytest.raises(ResolutionError, match="no reader for .*'.nrrd' files.*installed readers: .*sample/ome-tiff "
                       r"\(.ome.tif\).*choose one with `reader:` in the config or --reader"):
        reg.reader_for(tmp_path / "x.nrrd")


def test_unknown_kind_is_a_programming_error(biom3d_plugins):
    with pytest.raises(ValueError, match="unknown component kind"):
        biom3d_plugins.registry.components("modle")


def test_qualified_id_of_missing_plugin(biom3d_plugins):
    reg = biom3d_plugins.register(sample_plugin, name="sample")
    with pytest.raises(ResolutionError, match="unknown model 'acme/net': no plugin 'acme' is installed .*"
                       "Did you mean: 'sample/net'"):
        reg.resolve("model", "acme/net")


def _twin_readers(priority: int):
    from biom3d.core import hookimpl
    from biom3d.core.specs import ReaderSpec

    class Twin:
        @hookimpl
        def biom3d_readers(self):
            yield ReaderSpec(name="tiff", target=sample_plugin.build_net, suffixes=(".tif",), priority=priority)

    return Twin()


def test_an_exact_format_tie_is_an_error_naming_both_and_a_choice_settles_it(biom3d_plugins, tmp_path):
    biom3d_plugins.register(sample_plugin, name="sample")
    reg = biom3d_plugins.register(_twin_readers(5), name="twin")  # same .tif priority as sample/tiff-fast
    with pytest.raises(ResolutionError, match=r"a.tif: readers sample/tiff-fast, twin/tiff claim this format at the "
                       "same priority; choose one with `reader:`"):
        reg.reader_for(tmp_path / "a.tif")
    assert reg.reader_for(tmp_path / "a.tif", "twin/tiff").qid == "twin/tiff"
    assert reg.reader_for(tmp_path / "a.tiff", "twin/tiff").qid == "sample/tiff"  # the choice reads what it claims
    clashes = dict(reg.suffix_clashes("reader"))
    assert [c.qid for c in clashes[".tif"]] == ["sample/tiff-fast", "twin/tiff", "sample/tiff"]


def test_a_higher_priority_wins_and_the_clash_is_still_reported(biom3d_plugins, tmp_path):
    biom3d_plugins.register(sample_plugin, name="sample")
    reg = biom3d_plugins.register(_twin_readers(9), name="twin")
    assert reg.reader_for(tmp_path / "a.tif").qid == "twin/tiff"
    assert dict(reg.suffix_clashes("reader"))[".tif"][0].qid == "twin/tiff"


def test_component_build_gives_the_cli_error_with_did_you_mean(biom3d_plugins):
    from biom3d.core.errors import ConfigError

    reg = biom3d_plugins.register(sample_plugin, name="sample")
    with pytest.raises(ConfigError, match=r"(?s)model 'sample/net'.*params.depht: unknown key; did you mean 'depth'"):
        reg.resolve("model", "net").build({"depht": 3})


def test_a_context_validator_speaks_without_pydantics_prefix(biom3d_plugins):
    from biom3d.core.config import validate
    from biom3d.core.errors import ConfigError

    reg = biom3d_plugins.register(sample_plugin, name="sample")
    with pytest.raises(ConfigError) as info:
        validate({"patch_size": [64, 80, 96], "model": "swin"}, registry=reg)
    message = {p.path: p.message for p in info.value.problems}["model.params"]
    assert message.startswith("patch_size [64, 80, 96] must be divisible by 32") and "Value error" not in message

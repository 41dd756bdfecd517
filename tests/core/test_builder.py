from biom3d.core.builder import Builder
from tests.core import sample_plugin


def test_builder_builds_slots_and_any_component_with_context(biom3d_plugins):
    biom3d_plugins.register(sample_plugin, name="sample")
    b = Builder({"num_classes": 2, "num_pools": [3, 5, 5], "model": {"name": "net", "params": {"depth": 2}}})
    assert b.context.num_pools == (3, 5, 5) and b.context.out_channels == 3
    assert b.build("model") == ("net", (3, 5, 5), 2, 3)
    # a module's own params override the shared value
    assert b.build_component("model", "Net3D", {"num_pools": [1, 1, 1]}) == ("net", (1, 1, 1), 4, 3)
    # the context can be adjusted per build (multi-label: one channel per class)
    assert b.build("model", multilabel=True)[3] == 2
    assert len(b.build("metrics")) == 2


def test_python_api_is_reachable_from_the_package():
    import biom3d.core as core

    assert core.Builder is Builder
    assert callable(core.load_config) and callable(core.get_registry)


def test_metric_kind_components_learn_their_slot(biom3d_plugins):
    from biom3d.core import hookimpl
    from biom3d.core.specs import MetricSpec

    class Both:
        @hookimpl
        def biom3d_metrics(self):
            yield MetricSpec(name="both", target=lambda p, ctx: ctx.role, roles={"loss", "metric"})
    biom3d_plugins.register(sample_plugin, name="sample")
    biom3d_plugins.register(Both(), name="both")
    b = Builder({"loss": "both", "metrics": ["both"]})
    assert b.build("loss") == "loss" and b.build("metrics") == ["metric"]

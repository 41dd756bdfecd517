"""Discovery through real entry points of fake installed distributions."""

import sys

import pytest

from biom3d.core.discovery import discover
from biom3d.core.errors import PluginError
from biom3d.core.registry import ResolutionError


def _states(registry):
    return {key: (p.state, p.reason) for key, p in registry.plugins.items()}


def test_each_plugin_gets_its_state_and_reason(fake_dists):
    reg = discover()
    states = _states(reg)
    assert states["core"][0] == "loaded"
    assert states["acme"] == ("loaded", None)
    assert reg.plugins["acme"].dist == "biom3d-acme" and reg.plugins["acme"].version == "0.2.0"

    state, reason = states["broken"]
    assert state == "failed" and "einops_is_not_installed_anywhere" in reason

    state, reason = states["wrongrec"]
    assert state == "failed" and "biom3d_models" in reason and "expected ModelSpec" in reason

    state, reason = states["typo"]
    assert state == "failed" and "'biom3d_model'" in reason and "did you mean 'biom3d_models'" in reason

    state, reason = states["oldcore"]
    assert state == "incompatible" and "biom3d-core<0.1" in reason
    assert "fx_oldcore.plugin" not in sys.modules  # rejected before import

    shadowed = [p for p in reg.plugins.values() if p.dist == "biom3d-acme-fork"]
    assert len(shadowed) == 1 and shadowed[0].state == "shadowed"
    assert "biom3d-acme 0.2.0" in shadowed[0].reason
    assert "fx_acme_fork.plugin" not in sys.modules


def test_first_party_plugins_are_discovered(fake_dists):
    reg = discover()
    for name, dist in [("io", "biom3d-io"), ("models", "biom3d-models"), ("monai", "biom3d-monai"), ("cli", "biom3d-cli")]:
        assert reg.plugins[name].state == "loaded", reg.plugins[name]
        assert reg.plugins[name].dist == dist


def test_failed_plugins_offer_nothing_and_clash_makes_short_name_ambiguous(fake_dists):
    reg = discover()
    owners = {c.plugin.name for c in reg.components("model")}
    assert {"wrongrec", "typo", "broken"}.isdisjoint(owners)
    with pytest.raises(ResolutionError) as info:
        reg.resolve("model", "tiny-net")
    assert "acme/tiny-net" in str(info.value) and "clash/tiny-net" in str(info.value)
    assert reg.resolve("model", "acme/tiny-net").plugin.name == "acme"
    assert reg.resolve("model", "TinyNet").qid == "acme/tiny-net"  # alias offered once
    assert reg.resolve("model", "clash-only").qid == "clash/clash-only"
    assert any("also offered by plugin 'clash' (biom3d-clash 1.0.0)" in n for n in reg.plugins["acme"].notes)


def test_unknown_name_suggests_and_names_failed_plugins(fake_dists):
    reg = discover()
    with pytest.raises(ResolutionError) as info:
        reg.resolve("model", "tiny-nett")
    msg = str(info.value)
    assert "Did you mean" in msg and "tiny-net" in msg
    assert "plugin 'broken' (biom3d-broken 1.0.0) failed" in msg
    assert "plugin 'oldcore' (biom3d-oldcore 0.0.9) is incompatible" in msg


def test_disable_and_allowlist_block_before_import(fake_dists, monkeypatch):
    monkeypatch.setenv("BIOM3D_DISABLE_PLUGINS", "broken, clash")
    reg = discover()
    assert reg.plugins["broken"].state == "blocked" and "BIOM3D_DISABLE_PLUGINS" in reg.plugins["broken"].reason
    assert reg.resolve("model", "tiny-net").qid == "acme/tiny-net"  # no longer ambiguous

    monkeypatch.delenv("BIOM3D_DISABLE_PLUGINS")
    monkeypatch.setenv("BIOM3D_PLUGINS", "acme")
    reg = discover()
    assert reg.plugins["acme"].state == "loaded"
    assert reg.plugins["core"].state == "loaded"  # core cannot be blocked
    assert reg.plugins["clash"].state == "blocked" and "allowlist" in reg.plugins["clash"].reason
    assert reg.plugins["models"].state == "blocked"


def test_strict_mode_reraises_with_the_plugin_named(fake_dists, monkeypatch):
    monkeypatch.setenv("BIOM3D_STRICT_PLUGINS", "1")
    with pytest.raises(PluginError, match="plugin 'broken' \\(biom3d-broken 1.0.0\\) failed") as info:
        discover()
    assert isinstance(info.value.__cause__, ModuleNotFoundError)


def test_records_are_attributed_and_built_with_validated_params(fake_dists):
    from biom3d.core.context import RunContext

    reg = discover()
    comp = reg.resolve("model", "acme/tiny-net")
    built = comp.build({"width": 8}, RunContext(num_classes=2))
    assert built == {"width": 8, "num_pools": (2, 2, 2), "classes": 3}
    metric = reg.resolve("metric", "acme-dice")
    assert metric.plugin.dist == "biom3d-acme"


@pytest.mark.parametrize(
    "requires, problem",
    [
        (["biom3d-core>=0.1,<0.2"], None),
        (["Biom3d_Core (>=0.1,<0.2)"], None),
        (["biom3d-core<0.1"], "requires biom3d-core<0.1"),
        (["biom3d-core>=9 ; python_version >= '3'"], "requires biom3d-core>=9"),
        (["biom3d-core>=9; extra == 'dev'"], None),  # only for an extra: not a requirement of the plugin
        (["numpy>=1", "torch"], None),
    ],
)
def test_core_requirement_check(requires, problem):
    from biom3d.core.discovery import _core_requirement_problem

    class Dist:
        pass

    dist = Dist()
    dist.requires = requires
    found = _core_requirement_problem(dist)
    assert (found is None) if problem is None else (problem in found)

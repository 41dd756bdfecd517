"""Shared fixtures: fake installed distributions for real entry-point discovery."""

from __future__ import annotations

from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"
DISTS = FIXTURES / "dists"


@pytest.fixture
def fake_dists(monkeypatch):
    """Put the fake distributions on sys.path (main first, then a later dir with a shadowing copy)."""
    monkeypatch.syspath_prepend(str(DISTS / "later"))
    monkeypatch.syspath_prepend(str(DISTS / "main"))
    for var in ("BIOM3D_DISABLE_PLUGINS", "BIOM3D_PLUGINS", "BIOM3D_STRICT_PLUGINS"):
        monkeypatch.delenv(var, raising=False)
    return DISTS

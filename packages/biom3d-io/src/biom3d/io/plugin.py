"""biom3d-io plugin entry: hookimpls and params models only (no heavy imports)."""

from __future__ import annotations

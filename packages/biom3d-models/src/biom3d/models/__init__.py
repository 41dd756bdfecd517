"""biom3d-models."""

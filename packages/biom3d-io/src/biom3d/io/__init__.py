"""biom3d-io."""

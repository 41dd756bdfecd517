"""biom3d-monai."""

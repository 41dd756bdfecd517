"""The biom3d command line."""

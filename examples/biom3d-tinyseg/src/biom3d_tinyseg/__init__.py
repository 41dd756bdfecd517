"""biom3d-tinyseg: a small third-party biom3d plugin (top-level package ``biom3d_tinyseg``, never ``biom3d``)."""

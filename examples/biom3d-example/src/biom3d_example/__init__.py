"""An example third-party biom3d plugin (top-level package ``biom3d_<name>``, never inside ``biom3d``)."""

"""biom3d-core's own method (the paper's preprocessing, auto-configuration, trainer, predictor, post-processing,
callbacks), registered through ``plugin.py`` like any other plugin. The framework never imports this package."""

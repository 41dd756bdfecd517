"""The pipeline stages behind `biom3d preprocess | train | predict | eval | run`, as plain functions."""

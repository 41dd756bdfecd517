"""biom3d-cli's plugin entry: a front end only, it offers no components.

It is registered so that `biom3d plugins` (and a run's plugins.json) record which CLI version drove a run.
"""

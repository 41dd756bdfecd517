"""biom3d-gui's plugin entry: a front end only, it offers no components.

It is registered so that `biom3d plugins` (and a run's plugins.json) show which GUI version is installed. The
`biom3d gui` command comes through the ``biom3d.cli_commands`` entry point (:mod:`biom3d.gui.cli`).
"""

"""biom3d-export's plugin entry: it offers no components.

It is registered so that `biom3d plugins` shows which version is installed. The `biom3d export` command comes
through the ``biom3d.cli_commands`` entry point (:mod:`biom3d.export.cli`); predicting from an export needs
only biom3d-core (:mod:`biom3d.core.exported`), not this distribution.
"""

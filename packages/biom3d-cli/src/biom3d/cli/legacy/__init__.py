"""Import configs of the original biom3d (0.1.x) into the current format, for `biom3d config import`.

It lives in the CLI, not the core, because the mapping names components of other distributions
(``models/...``, ``io/...``), which the core may not. The converted config names every component explicitly
with qualified ids, so it means the same whichever default stack is installed.

- :mod:`.reader` / :mod:`.python_config`: the original's files read as data (its ``config.yaml`` and its Python
  configs); nothing in them is ever imported, called or executed.
- :mod:`.convert`, with :mod:`.networks` and :mod:`.losses`: the mapping, section by section, on the tables
  of :mod:`.mapping`; whatever has no meaning here becomes a note, never a guess.
"""

from biom3d.cli.legacy.convert import import_legacy
from biom3d.cli.legacy.reader import read_legacy, read_legacy_python, read_legacy_yaml

__all__ = ["import_legacy", "read_legacy", "read_legacy_python", "read_legacy_yaml"]

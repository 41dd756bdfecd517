"""biom3d-core's own components, registered through the same hooks as every plugin (plugin name ``core``).

Light: params models and spec records only; every target module is imported when a run builds it.
"""

from __future__ import annotations

"""Read the original's config files as plain data; nothing in them is ever imported, called or executed.

Its run folders keep ``log/config.yaml``, written with ``yaml.dump``: tuples, numpy values (configs built in
notebooks) and ``AttrDict`` appear there as ``!!python/...`` tags, which ``safe_load`` refuses and the
original's ``FullLoader`` would construct; here they are decoded as plain data. Its Python configs
(``config_default.py`` and the ``<date>-<desc>.py`` files its auto-configuration writes) are read by
:mod:`.python_config`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from biom3d.cli.legacy.python_config import read_legacy_python
from biom3d.core.config import read_yaml_text


def read_legacy(path: str | Path) -> tuple[dict[str, Any], list[str]]:
    """Read an original config, ``.py`` or YAML, as (upper-case keys -> values, notes on what was not read).

    Raises ValueError, naming the file, when it cannot be read as data.
    """
    path = Path(path)
    if path.suffix == ".py":
        return read_legacy_python(path)
    return read_legacy_yaml(path), []


def read_legacy_yaml(path: str | Path) -> dict[str, Any]:
    """Read an original ``config.yaml``; ``!!python/...`` tags become plain data and are never executed.
    Size, depth and alias expansion are bounded as for every config (ConfigError beyond them)."""
    path = Path(path)
    try:
        data = yaml.load(read_yaml_text(path), Loader=_LegacyLoader)  # a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path}: the top level must be a mapping, got {type(data).__name__}")
    return data


class _LegacyLoader(yaml.SafeLoader):
    """SafeLoader that reads ``!!python/...`` tags as plain data: nothing is imported, looked up or called."""


def _python_tag(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Any:
    kind, _, target = suffix.partition(":")
    if kind == "object/apply" and re.fullmatch(r"numpy(\._?core)?\.multiarray\.scalar", target):
        return _decoded(loader, node, _numpy_scalar)
    if kind == "object/apply" and re.fullmatch(r"numpy(\._?core)?\.multiarray\._reconstruct", target):
        return _decoded(loader, node, _numpy_array)
    if kind == "object/apply" and target == "numpy.dtype":
        return _decoded(loader, node, _numpy_dtype)
    if kind in ("name", "module"):
        return target  # a reference to a Python object: its dotted name, as text
    if kind in _SCALAR_TAGS and isinstance(node, yaml.ScalarNode):
        return _SCALAR_TAGS[kind](loader, node)
    return _plain(loader, node)


def _plain(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    """A tagged node as the mapping, list or string it is written as (an AttrDict's items as a dict)."""
    if isinstance(node, yaml.MappingNode):
        value = loader.construct_mapping(node, deep=True)
        if isinstance(value.get("dictitems"), dict) and set(value) <= {"args", "kwds", "state", "listitems", "dictitems"}:
            return dict(value["dictitems"])
        return dict(value)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    return loader.construct_scalar(node)


def _decoded(loader: yaml.SafeLoader, node: yaml.Node, decode: Any) -> Any:
    """numpy values rebuilt from their raw bytes and dtype code (no pickling), else the plain structure."""
    value = _plain(loader, node)
    try:
        return decode(value)
    except Exception:  # an unexpected layout stays plain data
        return value


def _numpy_dtype(value: dict[str, Any]) -> str:
    import numpy as np

    dtype = np.dtype(str(value["args"][0]))
    order = (value.get("state") or [None, None])[1]
    return (dtype.newbyteorder(order) if order in ("<", ">") else dtype).str


def _numpy_scalar(value: list[Any]) -> Any:
    import numpy as np

    dtype, data = value[0], value[1]
    return np.frombuffer(data, dtype=np.dtype(dtype), count=1)[0].item()


def _numpy_array(value: dict[str, Any]) -> list[Any]:
    import numpy as np

    _, shape, dtype, fortran, data = value["state"]
    if not isinstance(data, bytes):
        return list(data)  # object arrays keep their items as a list
    array = np.frombuffer(data, dtype=np.dtype(dtype)).reshape(shape, order="F" if fortran else "C")
    return array.tolist()


_SCALAR_TAGS = {
    "none": lambda loader, node: None,
    "bool": lambda loader, node: loader.construct_yaml_bool(node),
    "int": lambda loader, node: loader.construct_yaml_int(node),
    "long": lambda loader, node: loader.construct_yaml_int(node),
    "float": lambda loader, node: loader.construct_yaml_float(node),
    "str": lambda loader, node: loader.construct_scalar(node),
    "unicode": lambda loader, node: loader.construct_scalar(node),
    "bytes": lambda loader, node: loader.construct_yaml_binary(node),
}

_LegacyLoader.add_multi_constructor("tag:yaml.org,2002:python/", _python_tag)

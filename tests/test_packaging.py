"""Wheels as hatchling builds them: every module of the distribution, no ``biom3d/__init__.py`` (PEP 420
namespace), and metadata that declares the pyproject's dependencies and entry points. The full matrix (each
supported combination installed from wheels alone) is `.ci/matrix`."""

from __future__ import annotations

import configparser
import subprocess
import sys
import tomllib
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
DISTS = ("core", "io", "models", "monai", "cli", "gui", "export")


def _build_wheel(package: Path, out: Path) -> Path:
    """hatchling's PEP 517 build_wheel, in a subprocess so that its cwd is the distribution's folder."""
    code = "import sys, hatchling.build as b; print(b.build_wheel(sys.argv[1]))"
    done = subprocess.run([sys.executable, "-c", code, str(out)], cwd=package, capture_output=True, text=True, encoding="utf-8", errors="replace",
                          timeout=120)
    assert done.returncode == 0, done.stderr
    return out / done.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def wheels(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("wheels")
    return {d: _build_wheel(ROOT / "packages" / f"biom3d-{d}", out) for d in DISTS}


def _names(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as zf:
        return set(zf.namelist())


def _read(wheel: Path, suffix: str) -> str:
    with zipfile.ZipFile(wheel) as zf:
        (name,) = [n for n in zf.namelist() if n.endswith(suffix) and ".dist-info/" in n]
        return zf.read(name).decode()


def _requirements(lines: list[str]) -> set[tuple[str, str, str]]:
    reqs = [Requirement(line) for line in lines]
    return {(canonicalize_name(r.name), str(r.specifier), str(r.marker or "")) for r in reqs}


def _project(dist: str) -> dict:
    return tomllib.loads((ROOT / "packages" / f"biom3d-{dist}" / "pyproject.toml").read_text(encoding="utf-8"))["project"]


@pytest.mark.parametrize("dist", DISTS)
def test_wheel_holds_every_module_and_no_namespace_init(wheels, dist):
    names = _names(wheels[dist])
    src = ROOT / "packages" / f"biom3d-{dist}" / "src"
    modules = {p.relative_to(src).as_posix() for p in (src / "biom3d" / dist).rglob("*.py")
               if "__pycache__" not in p.parts}
    assert f"biom3d/{dist}/__init__.py" in modules
    assert modules == {n for n in names if n.endswith(".py")}
    assert "biom3d/__init__.py" not in names  # one such file would hide every other biom3d distribution
    assert not [n for n in names if not (n.startswith(f"biom3d/{dist}/") or ".dist-info/" in n)]


@pytest.mark.parametrize("dist", DISTS)
def test_wheel_metadata_declares_the_dependencies_and_entry_points(wheels, dist):
    project = _project(dist)
    meta = Parser().parsestr(_read(wheels[dist], ".dist-info/METADATA"))
    assert meta["Name"] == f"biom3d-{dist}"
    assert meta["Requires-Python"] == project["requires-python"]
    extras = [f'{r}; extra == "{extra}"' for extra, reqs in project.get("optional-dependencies", {}).items() for r in reqs]
    assert _requirements(meta.get_all("Requires-Dist") or []) == _requirements(project["dependencies"] + extras)
    assert set(meta.get_all("Provides-Extra") or []) == set(project.get("optional-dependencies", {}))
    if dist != "core":
        assert any(Requirement(r).name == "biom3d-core" for r in project["dependencies"])
    entry_points = configparser.ConfigParser()
    entry_points.read_string(_read(wheels[dist], ".dist-info/entry_points.txt"))
    for group, entries in project.get("entry-points", {}).items():
        assert dict(entry_points[group]) == entries
    for name, target in project.get("scripts", {}).items():
        assert entry_points["console_scripts"][name] == target


# A module imported without being declared: why that is fine.
UNDECLARED_OK = {
    ("core", "pytest"): "biom3d.core.testing is a pytest plugin: only pytest itself imports it",
    ("models", "pydantic_core"): "pydantic pins its own pydantic-core",
}


def _imported_modules(src: Path) -> set[str]:
    """Top-level names of every absolute import under ``src``, lazy ones included."""
    import ast

    names = set()
    for path in src.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - {"__future__", "biom3d"}


@pytest.mark.parametrize("dist", DISTS)
def test_every_third_party_import_is_declared(dist):
    """What a distribution imports, it declares: relying on another distribution's dependencies breaks the day
    that one drops them (the packaging matrix installs each combination with declared dependencies only)."""
    from importlib.metadata import packages_distributions

    providers = packages_distributions()
    project = _project(dist)
    # an optional extra counts: its import sits behind a clear "pip install biom3d-core[onnx]" error
    optional = [r for reqs in project.get("optional-dependencies", {}).values() for r in reqs]
    declared = {canonicalize_name(Requirement(r).name) for r in project["dependencies"] + optional}
    missing = {}
    for module in sorted(_imported_modules(ROOT / "packages" / f"biom3d-{dist}" / "src")):
        if (dist, module) in UNDECLARED_OK:
            continue
        dists = {canonicalize_name(d) for d in providers.get(module, [])}
        assert dists, f"biom3d-{dist} imports {module}, which no installed distribution provides"
        if not dists & declared:
            missing[module] = sorted(dists)
    assert not missing, f"biom3d-{dist} imports undeclared modules (module: distributions): {missing}"

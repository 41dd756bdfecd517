"""Repository layout rules that keep the namespace package and the plugin contract working."""

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = sorted((ROOT / "packages").glob("biom3d-*"))


def test_the_distributions():
    assert [p.name for p in PACKAGES] == ["biom3d-cli", "biom3d-core", "biom3d-export", "biom3d-gui", "biom3d-io",
                                          "biom3d-models", "biom3d-monai"]


def test_no_distribution_ships_a_biom3d_init():
    # one src/biom3d/__init__.py would turn the PEP 420 namespace into a regular package and hide the others
    offenders = [p for pkg in PACKAGES for p in [pkg / "src" / "biom3d" / "__init__.py"] if p.exists()]
    assert offenders == []
    import biom3d

    assert getattr(biom3d, "__file__", None) is None and len(list(biom3d.__path__)) == len(PACKAGES)


def test_each_distribution_declares_its_plugin_and_builds_with_hatchling():
    for pkg in PACKAGES:
        meta = tomllib.loads((pkg / "pyproject.toml").read_text(encoding="utf-8"))
        assert meta["build-system"]["build-backend"] == "hatchling.build"
        assert meta["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"] == ["src/biom3d"]
        short = pkg.name.removeprefix("biom3d-")
        if short == "core":
            assert "biom3d.plugins" not in meta["project"].get("entry-points", {})  # builtins register directly
            continue
        assert meta["project"]["entry-points"]["biom3d.plugins"] == {short: f"biom3d.{short}.plugin"}
        assert any(d.startswith("biom3d-core") for d in meta["project"]["dependencies"])
        assert (pkg / "src" / "biom3d" / short / "plugin.py").is_file()


def test_torch_is_pinned_in_requirements_and_ranged_in_metadata():
    reqs = (ROOT / "requirements.txt").read_text(encoding="utf-8").splitlines()
    assert "torch==2.13.0" in reqs
    assert [r for r in reqs if r.startswith("-e ")] == [f"-e packages/{p.name}" for p in PACKAGES[1:2] + PACKAGES[2:] + PACKAGES[:1]]
    for pkg in PACKAGES:
        deps = tomllib.loads((pkg / "pyproject.toml").read_text(encoding="utf-8"))["project"]["dependencies"]
        assert not [d for d in deps if d.startswith("torch") and "==" in d], pkg.name


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    commands = [line for line in readme.splitlines() if line.startswith("python3.11 -m venv")]
    test_command = next(c for c in commands if "pytest" in c)
    assert "requirements-dev.txt" in test_command
    assert test_command in (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()


CORE = ROOT / "packages" / "biom3d-core" / "src" / "biom3d" / "core"


def _imports(path: Path) -> set[str]:
    """Modules a file imports (absolute names), at any depth: lazy imports count too."""
    import ast

    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_the_framework_never_imports_the_builtins():
    # core's own method is a plugin like the others: the framework and the stages reach it through the registry
    framework = [p for p in CORE.rglob("*.py") if "builtins" not in p.relative_to(CORE).parts]
    offenders = {p.relative_to(CORE).as_posix(): sorted(n for n in _imports(p) if n.startswith("biom3d.core.builtins"))
                 for p in framework}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_no_import_circle_between_registry_and_discovery():
    import ast

    tree = ast.parse((CORE / "registry.py").read_text(encoding="utf-8"))
    runtime = {n.module for n in tree.body if isinstance(n, ast.ImportFrom)}  # TYPE_CHECKING imports are nested
    assert "biom3d.core.discovery" not in runtime and "biom3d.core.registry" in _imports(CORE / "discovery.py")


def test_core_modules_stay_small_and_no_names_one_letter_apart():
    import difflib

    sizes = {p.relative_to(CORE).as_posix(): len(p.read_text(encoding="utf-8").splitlines()) for p in CORE.rglob("*.py")}
    assert {k: n for k, n in sizes.items() if n > 400} == {}
    for folder in {p.parent for p in CORE.rglob("*.py")}:
        stems = sorted(p.stem for p in folder.glob("*.py") if not p.stem.startswith("_"))
        close = [(a, b) for i, a in enumerate(stems) for b in stems[i + 1:]
                 if len(a) > 3 and difflib.SequenceMatcher(None, a, b).ratio() > 0.9]
        assert close == [], folder


TEXT_CALLS = {"read_text", "write_text", "open", "TemporaryFile", "NamedTemporaryFile"}


def _text_calls_without_encoding(source: str) -> list[int]:
    """Lines of text-mode file calls that leave the encoding to the locale: an ASCII locale (as on CI) then
    fails on the first 'µm' in a README, config or log."""
    import ast

    lines = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call) or any(k.arg in ("encoding", None) for k in node.keywords):
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        if name not in TEXT_CALLS or (name == "open" and isinstance(func, ast.Attribute)
                                      and getattr(func.value, "id", "") in ("webbrowser", "Image", "zf", "os")):
            continue
        if (name, len(node.args)) in (("read_text", 1), ("write_text", 2)):
            continue  # Path's encoding given by position; a Distribution's read_text(name), UTF-8 by itself
        modes = [a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
        modes += [k.value.value for k in node.keywords if k.arg == "mode" and isinstance(k.value, ast.Constant)]
        mode = next((m for m in modes if set(m) <= set("rwxabt+")), None)
        binary = mode is not None and "b" in mode
        temporary_binary = name.endswith("TemporaryFile") and mode is None  # their default mode is "w+b"
        if not (binary or temporary_binary):
            lines.append(node.lineno)
    return lines


def test_text_files_are_read_and_written_as_utf8():
    assert _text_calls_without_encoding('Path("a").read_text()\nopen(p)\nopen(p, "rb")\nopen(p, encoding="utf-8")\n'
                                        'tempfile.TemporaryFile("w+")\ntempfile.TemporaryFile()\n'
                                        'dist.read_text("RECORD")\np.write_text(t)\n') == [1, 2, 5, 8]
    sources = [p for p in ROOT.glob("**/*.py") if not {".venv", "fixtures", "build"} & set(p.relative_to(ROOT).parts)]
    offenders = {p.relative_to(ROOT).as_posix(): lines for p in sources
                 if (lines := _text_calls_without_encoding(p.read_text(encoding="utf-8")))}
    for doc in [ROOT / "README.md", *ROOT.glob("docs/*.md"), *ROOT.glob("packages/*/README.md")]:  # copied by users
        for n, block in enumerate(re.findall(r"```python\n(.*?)```", doc.read_text(encoding="utf-8"), re.S)):
            if lines := _text_calls_without_encoding(block):
                offenders[f"{doc.relative_to(ROOT).as_posix()} python block {n + 1}"] = lines
    assert offenders == {}, "add encoding='utf-8' (the locale's encoding may be ASCII)"

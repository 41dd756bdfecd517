"""The core names no component of another distribution: which components make a default is the stacks'
business (declared by the plugins), so biom3d-core works, and says what is missing, whatever is installed."""

from __future__ import annotations

import re
from pathlib import Path

from biom3d.core.discovery import discover

CORE_SRC = Path(__file__).resolve().parents[2] / "packages" / "biom3d-core" / "src" / "biom3d" / "core"
FIRST_PARTY = ("io", "models", "monai")
# plain words the core uses as data keys, not as component names: eval.csv's columns
ALLOWED = {"dice": {"stages/evaluate.py", "stages/run.py"}, "iou": {"stages/evaluate.py"}}


def _quoted_strings(path: Path) -> list[str]:
    return re.findall(r"""["']([^"'\n]+)["']""", path.read_text(encoding="utf-8"))


def test_core_sources_hold_no_first_party_id_or_short_name():
    registry = discover()
    names = {n for c in registry.components() if c.plugin.name in FIRST_PARTY for n in c.spec.names}
    core_names = {n for c in registry.components() if c.plugin.name == "core" for n in c.spec.names}
    names -= core_names  # a name core offers itself is core's to use
    assert names, "the first-party plugins must be installed for this test to mean anything"
    qualified = re.compile(rf"^(?:{'|'.join(FIRST_PARTY)})/[a-z0-9]")
    offences = []
    for path in sorted(CORE_SRC.rglob("*.py")):
        rel = path.relative_to(CORE_SRC).as_posix()
        for text in _quoted_strings(path):
            if qualified.match(text) or (text in names and rel not in ALLOWED.get(text, set())):
                offences.append(f"{rel}: {text!r}")
    assert not offences, "biom3d-core names other distributions' components:\n" + "\n".join(offences)


def test_the_check_catches_a_planted_name(tmp_path):
    planted = tmp_path / "x.py"
    planted.write_text('DEFAULT = {"model": "models/unet3d-vgg-deep", "loss": "dice-ce"}\n', encoding="utf-8")
    assert {"models/unet3d-vgg-deep", "dice-ce"} <= set(_quoted_strings(planted))

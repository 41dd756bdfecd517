"""Run the `biom3d` CLI in a fresh interpreter and report which modules it imported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

PROBE = r"""
import json, sys
from biom3d.cli.app import main
try:
    rc = main(sys.argv[2:])
finally:
    with open(sys.argv[1], "w") as f:
        json.dump(sorted(sys.modules), f)
sys.exit(rc)
"""


def run_cli(args: list[str], tmp_path: Path, *, env: dict[str, str] | None = None, pythonpath: list[str] = ()):
    """Return (returncode, stdout, stderr, imported module names)."""
    out = tmp_path / f"modules-{os.getpid()}-{len(list(tmp_path.iterdir()))}.json"
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("BIOM3D_")}
    full_env.update(env or {})
    if pythonpath:
        full_env["PYTHONPATH"] = os.pathsep.join([*pythonpath, full_env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, str(out), *args], capture_output=True, text=True, encoding="utf-8", env=full_env, timeout=120
    )
    modules = set(json.loads(out.read_text(encoding="utf-8"))) if out.exists() else set()
    return proc.returncode, proc.stdout, proc.stderr, modules

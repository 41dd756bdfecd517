"""Wall time of `biom3d --help`, `--version`, `plugins` and `config validate` (median of N), side by side with a
bare interpreter start, with the first-party plugins and the example plugin installed.

    python benchmarks/bench_cli_startup.py [--runs 5]

Bars (issue: Foundation): --help <= 0.25 s, plugins <= 0.5 s on a 2-core machine.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    biom3d = shutil.which("biom3d", path=str(Path(sys.executable).parent)) or "biom3d"
    with tempfile.TemporaryDirectory() as tmp:
        site = Path(tmp) / "site"
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                        "--target", str(site), str(ROOT / "examples" / "biom3d-example")], check=True)
        env = {**os.environ, "PYTHONPATH": str(site)}
        config = Path(tmp) / "config.yaml"
        config.write_text("num_classes: 1\npatch_size: [32, 64, 64]\nnum_pools: [3, 4, 4]\nmodel: example/tiny-unet\n", encoding="utf-8")
        cases = {
            "python -c pass (reference)": [sys.executable, "-c", "pass"],
            "biom3d --help": [biom3d, "--help"],
            "biom3d --version": [biom3d, "--version"],
            "biom3d plugins": [biom3d, "plugins"],
            "biom3d plugins --components --json": [biom3d, "plugins", "--components", "--json"],
            "biom3d config validate": [biom3d, "config", "validate", str(config)],
        }
        base = None
        print(f"{'command':<40} {'median s':>9} {'min s':>7} {'x python':>9}")
        for name, cmd in cases.items():
            times = []
            for _ in range(args.runs + 1):
                start = time.perf_counter()
                proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
                times.append(time.perf_counter() - start)
                if proc.returncode != 0:
                    raise SystemExit(f"{name} failed: {proc.stderr}")
            times = times[1:]  # the first run warms the file cache
            median = statistics.median(times)
            base = base or median
            print(f"{name:<40} {median:>9.3f} {min(times):>7.3f} {median / base:>9.1f}")
        plugins = subprocess.run([biom3d, "plugins"], env=env, capture_output=True, text=True).stdout
        print(f"\nplugins installed: {len(plugins.strip().splitlines()) - 1} (incl. core and the example)")


if __name__ == "__main__":
    main()

"""Agreement of our auto-configuration with the original biom3d 0.1.2's, case by case.

    python benchmarks/bench_autoconfig.py [--orig-python PATH] [--write tests/core/data/autoconfig_original.json]

Runs the original's ``auto_config`` (``find_patch_pool_batch`` + ``get_aug_patch`` + the batch cap of its
preprocessing) in its own venv on a grid of median shapes x ``max_dim`` (and image counts for the batch rule),
runs ours on the same cases, and prints how many agree on patch size, poolings, batch size and augmentation
patch, with every disagreement listed. ``--write`` stores the original's answers as the test table that
``tests/core/test_autoconfig.py`` checks without the original installed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ORIG_DIR, ORIG_MISSING, RESULT_TAG, ROOT, base_parser, orig_available  # noqa: E402

MEDIANS = [
    (96, 256, 256), (120, 120, 120), (300, 60, 60), (60, 128, 128), (60, 256, 256), (128, 128, 128),
    (256, 256, 256), (512, 512, 512), (32, 128, 128), (1000, 100, 100), (2, 4000, 4000), (320, 64, 64),
    (77, 301, 299), (13, 512, 512), (200, 200, 50), (999, 17, 333), (1, 512, 512), (1, 1024, 1024),
    (48, 48, 48), (64, 64, 64), (10, 10, 10), (150, 180, 140), (176, 208, 176), (90, 512, 512),
    (30, 1024, 1024), (400, 400, 40), (250, 125, 60), (64, 512, 128), (100, 100, 700), (16, 64, 64),
    (5, 600, 600), (224, 224, 160), (112, 112, 112), (80, 300, 300), (36, 1100, 1300), (512, 64, 512),
]
MAX_DIMS = (64, 96, 128, 192)
# the batch rule: one median at several image counts (1 and 10 images: batch 2, as in the paper's tool)
BATCH_CASES = [((m, n)) for m in [(60, 128, 128), (16, 64, 64), (128, 128, 128), (10, 10, 10)]
               for n in (1, 10, 40, 100, 400, 2000)]
KEYS = ("patch_size", "num_pools", "batch_size", "aug_patch_size")


def cases() -> list[dict]:
    grid = [{"median": list(m), "max_dim": d, "num_images": None} for m in MEDIANS for d in MAX_DIMS]
    return grid + [{"median": list(m), "max_dim": 128, "num_images": n} for m, n in BATCH_CASES]


def run_original(python: str, todo: list[dict]) -> list[dict]:
    out = subprocess.run([python, str(ORIG_DIR / "autoconfig.py")], input=json.dumps(todo), capture_output=True,
                         text=True, encoding="utf-8", errors="replace", check=True)
    line = [ln for ln in out.stdout.splitlines() if ln.startswith(RESULT_TAG)][-1]
    return json.loads(line[len(RESULT_TAG):])["cases"]


def ours(case: dict) -> dict:
    from biom3d.core.builtins.autoconfig import auto_config

    return auto_config(case["median"], max_dim=case["max_dim"], num_images=case["num_images"]).as_dict()


def main() -> None:
    parser = base_parser(__doc__, repeats=1)
    parser.add_argument("--write", type=Path, help="store the original's answers here (the test table)")
    args = parser.parse_args()
    if not orig_available(args.orig_python):
        sys.exit(f"the original biom3d is needed: {ORIG_MISSING}")
    reference = run_original(args.orig_python, cases())
    agree, failed = 0, []
    for ref in reference:
        if "error" in ref:
            print(f"original fails on median {ref['median']} max_dim {ref['max_dim']}: {ref['error']}")
            continue
        mine = ours(ref)
        if all(mine[k] == ref[k] for k in KEYS):
            agree += 1
        else:
            failed.append((ref, mine))
    total = sum("error" not in r for r in reference)
    print(f"agreement with the original biom3d 0.1.2: {agree} of {total} cases (patch, pools, batch, aug patch)")
    for ref, mine in failed:
        print(f"  median {ref['median']} max_dim {ref['max_dim']} images {ref['num_images']}:")
        print(f"    original {[ref[k] for k in KEYS]}")
        print(f"    ours     {[mine[k] for k in KEYS]}")
    if args.write:
        rows = [r for r in reference if "error" not in r]
        body = {"source": "biom3d==0.1.2 auto_config (benchmarks/bench_autoconfig.py --write)", "cases": rows}
        args.write.write_text(json.dumps(body, indent=None, separators=(",", ":")).replace('},{', '},\n{') + "\n",
                              encoding="utf-8")
        print(f"wrote {len(rows)} cases to {args.write.relative_to(ROOT) if args.write.is_absolute() else args.write}")


if __name__ == "__main__":
    main()

"""Runs the ORIGINAL biom3d 0.1.2 auto-configuration on a list of cases; run by the original's python from
``benchmarks/bench_autoconfig.py``.

    <orig-python> benchmarks/orig/autoconfig.py < cases.json

Reads ``[{"median": [...], "max_dim": M, "num_images": N | null}, ...]`` on stdin and prints one line
``BENCH_RESULT {"cases": [...]}``: each case with the original's patch, pools, batch and augmentation patch
(``auto_config`` with the batch cap its preprocessing passes, ``len(images) // 20``; its stand-alone default
of 16 without an image count), or the error it raised.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import emit  # noqa: E402


def main() -> None:
    from biom3d.auto_config import auto_config

    results = []
    for case in json.load(sys.stdin):
        m = case["max_dim"]
        kwargs = {} if case.get("num_images") is None else {"max_batch": case["num_images"] // 20}
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                batch, aug, patch, pool = auto_config(median=case["median"], max_dims=(m, m, m), **kwargs)
            results.append({**case, "patch_size": [int(v) for v in patch], "num_pools": [int(v) for v in pool],
                            "batch_size": int(batch), "aug_patch_size": [int(v) for v in aug]})
        except Exception as exc:  # noqa: BLE001 - the original's own failure is a result too
            results.append({**case, "error": f"{type(exc).__name__}: {exc}"})
    emit({"cases": results})


if __name__ == "__main__":
    main()

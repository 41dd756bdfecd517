#!/usr/bin/env bash
# Issue 15, point 4: mixed precision, channels-last and the batched augmenter on a real GPU, in one device call
# (benchmarks/README.md says how). Fill .whl/ here first (device_wheels.sh), then:
#
#   run(command="bash benchmarks/device_check.sh", carry=[".whl"], timeout_s=420)
#
# About 7 of the session's 15 device minutes with the machine's start, leaving room to rerun a part.
#
# On the device machine it installs the carried wheels into /tmp/site (no registry there) and runs, each under
# its own time limit so that one slow part leaves the others their turn, its output also kept under $OUT:
#   1. bench_train_loop.py: s/iteration, loader wait and on_device per iteration, the data's share (goal: < 5%)
#      and peak CUDA memory, TorchIO against the batched augmenter, the full-width network, AMP on;
#   2. bench_augment.py at batch 2: samples/s with its cuda column;
#   3. bench_ddp.py --device cuda: Builder.train on one GPU, fp32 against AMP.
# DEVICE=cpu QUICK=1 rehearses it on a CPU (the same steps at smoke sizes).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
DEVICE=${DEVICE:-cuda}
PYTHON=${PYTHON:-python3}
quick=()
[ -n "${QUICK:-}" ] && quick=(--quick)
site=$(mktemp -d)
"$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" .whl/*.whl || exit 1
export PYTHONPATH="$site" PYTHONUNBUFFERED=1
"$PYTHON" - <<'EOF' 2>&1 | tee "$OUT/machine.txt"
import os, platform, torch
from biom3d.core.discovery import get_registry
print(platform.python_version(), "torch", torch.__version__, "CUDA", torch.cuda.is_available(),
      torch.cuda.get_device_name() if torch.cuda.is_available() else "", os.cpu_count(), "CPUs")
print("datasets:", ", ".join(sorted(c.qid for c in get_registry().components("dataset"))))
EOF
[ "${PIPESTATUS[0]}" -eq 0 ] || exit 1  # biom3d does not import: the wheels are not the machine's (PYVER)
status=0
part() {  # part SECONDS NAME COMMAND...: one benchmark, limited, logged
    local limit=$1 name=$2
    shift 2
    echo "== $name: $*"
    timeout -k 15 "$limit" "$@" 2>&1 | tee "$OUT/$name.txt"  # -k: torchrun and CUDA may outlive a TERM
    local code=${PIPESTATUS[0]}
    [ "$code" -eq 0 ] || { echo "== $name: exit $code"; status=1; }
}
part 150 train_loop "$PYTHON" benchmarks/bench_train_loop.py --device "$DEVICE" "${quick[@]}"
part 150 augment "$PYTHON" benchmarks/bench_augment.py --batches 2 --repeats 2 "${quick[@]}"
part 90 ddp "$PYTHON" benchmarks/bench_ddp.py --device "$DEVICE" "${quick[@]}"
exit $status

#!/usr/bin/env bash
# Fill .whl/ (git-ignored) with what the GPU check (device_check.sh) needs on a lent device machine and its image
# lacks. That image has Python 3.12 with PyTorch, numpy, scipy, scikit-image, matplotlib, typer, pluggy, tqdm
# and rich (/work/.library/device/KINDS.md) and reaches no package registry, so the rest travels as wheels:
# biom3d's core, io, models and cli built from this checkout, and pydantic, TorchIO and SimpleITK at the
# versions the dev venv resolved (what CI tests). About 58 MB of the 64 MiB a device call can carry.
#
#   bash benchmarks/device_wheels.sh               # for the device machine (CPython 3.12, x86-64)
#   PYVER=3.11 bash benchmarks/device_wheels.sh    # for a local rehearsal (benchmarks/README.md)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
PYVER=${PYVER:-3.12}
# the distributions the image lacks, pinned as the dev venv has them
PINS=$("$PY" - <<'EOF'
from importlib.metadata import version
names = ["pydantic", "pydantic-core", "annotated-types", "typing-inspection", "typing-extensions", "torchio",
         "simpleitk", "nibabel", "deprecated"]
print(" ".join(f"{name}=={version(name)}" for name in names))
EOF
)
rm -rf .whl
mkdir .whl
for package in core io models cli; do
    "$PY" -m pip wheel -q --no-deps -w .whl "packages/biom3d-$package"
done
tags=()
for tag in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
    tags+=(--platform "$tag")
done
# shellcheck disable=SC2086  # PINS: one requirement per word
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp "${tags[@]}" \
    -d .whl $PINS
du -sh .whl

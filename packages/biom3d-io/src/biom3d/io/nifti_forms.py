"""A NIfTI output keeps its input's two orientations, the qform and the sform, field for field.

A NIfTI header holds two affines, each with a code saying what space it maps to (scanner, aligned, a template
such as MNI). ITK reads one of them as the image's geometry and writes that one into both, so a mask written
through SimpleITK beside a registered scan (sform: the template, qform: the scanner) sits elsewhere than its
image in every viewer that reads the sform (nibabel, FSL, most of neuroimaging). The input's fields are kept
from reading (``ImageData.meta["nifti"]``, as ITK exposes them) and put back into the written header; the
voxel data is never rewritten.
"""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path
from typing import Any

from biom3d.core.atomic import atomic_path

#: the header fields that place the voxels: the codes, the quaternion and offset of the qform, its handedness
#: (``pixdim[0]``) and the sform's rows. Spacing (``pixdim[1..3]``) is the writer's own, equal by construction.
FIELDS = ("qform_code", "sform_code", "quatern_b", "quatern_c", "quatern_d", "qoffset_x", "qoffset_y", "qoffset_z",
          "pixdim[0]", "srow_x", "srow_y", "srow_z")
NIFTI1_HEADER = 348
SUFFIXES = (".nii", ".nii.gz")


def read_forms(image: Any) -> dict[str, str] | None:
    """The orientation fields of a NIfTI that SimpleITK read (its metadata), or None for other formats."""
    if not all(image.HasMetaDataKey(k) for k in FIELDS):
        return None
    return {k: image.GetMetaData(k).strip() for k in FIELDS}


def restore_forms(path: Path, forms: dict[str, str]) -> bool:
    """Write ``forms`` into the NIfTI-1 header of ``path`` (plain or gzipped, replaced atomically); whether anything changed. A NIfTI-2 file or unparsable fields are left as written."""
    import nibabel as nib
    import numpy as np

    with open(path, "rb") as f:
        zipped = f.read(2) == b"\x1f\x8b"
    opener = gzip.open if zipped else open
    with opener(path, "rb") as src:
        block = src.read(NIFTI1_HEADER)
    if len(block) != NIFTI1_HEADER:
        return False
    header = nib.Nifti1Header(binaryblock=block)
    if int(header["sizeof_hdr"]) != NIFTI1_HEADER:
        return False
    try:
        for key, text in forms.items():
            values = np.array(text.split(), dtype=np.float64)
            if key == "pixdim[0]":
                pixdim = header["pixdim"].copy()
                pixdim[0] = values[0]
                header["pixdim"] = pixdim
            else:
                header[key] = values if key.startswith("srow_") else values[0]
    except (ValueError, IndexError):
        return False
    if header.binaryblock == block:
        return False
    with atomic_path(path) as staged, opener(path, "rb") as src, \
            (gzip.open(staged, "wb", compresslevel=6) if zipped else open(staged, "wb")) as dst:
        src.read(NIFTI1_HEADER)
        dst.write(header.binaryblock)
        shutil.copyfileobj(src, dst, 1 << 20)
    return True

"""A NIfTI output keeps its input's two orientations, the qform and the sform, field for field.

A NIfTI header holds two affines, each with a code saying what space it maps to (scanner, aligned, a template
such as MNI). ITK reads one of them as the image's geometry and writes that one into both, so a mask written
through SimpleITK beside a registered scan (sform: the template, qform: the scanner) sits elsewhere than its
image in every viewer that reads the sform (nibabel, FSL, most of neuroimaging). The input header's spatial
fields are kept from reading (``ImageData.meta["nifti"]``, read by nibabel: ITK does not expose the qform's
handedness) and put back into the written header, with the spacing and unit they are expressed in, so that
every reader finds the input's geometry; the voxel data is never rewritten.
"""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path
from typing import Any

from biom3d.core.atomic import atomic_path
from biom3d.core.nifti_header import apply_forms, header_forms

NIFTI1_HEADER = 348
SUFFIXES = (".nii", ".nii.gz")


def read_forms(path: Path) -> dict[str, Any] | None:
    """The spatial header fields of a NIfTI-1 file (its grid's size as ``dim``), or None for other files."""
    if not path.name.lower().endswith(SUFFIXES):
        return None
    import nibabel as nib

    try:
        header = nib.load(path).header  # the header only: the data stays on disk
    except Exception:  # noqa: BLE001 - ITK read the file; a header nibabel refuses keeps ITK's geometry alone
        return None
    if type(header) is not nib.Nifti1Header:
        return None
    return header_forms(header)


def restore_forms(path: Path, forms: dict[str, Any]) -> bool:
    """Write ``forms`` (of :func:`read_forms`) into the NIfTI-1 header of ``path``, written by ITK for the same
    grid (plain or gzipped, replaced atomically); whether anything changed."""
    import nibabel as nib

    with open(path, "rb") as f:
        zipped = f.read(2) == b"\x1f\x8b"
    opener = gzip.open if zipped else open
    with opener(path, "rb") as src:
        block = src.read(NIFTI1_HEADER)
    if len(block) != NIFTI1_HEADER or NIFTI1_HEADER not in (int.from_bytes(block[:4], "little"),
                                                            int.from_bytes(block[:4], "big")):
        return False  # not NIfTI-1
    header = nib.Nifti1Header(binaryblock=block)
    if not apply_forms(header, forms):
        return False
    if header.binaryblock == block:
        return False
    with atomic_path(path) as staged, opener(path, "rb") as src, open(staged, "wb") as raw, \
            (gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=6) if zipped else raw) as dst:
        # a nameless gzip member, as ITK writes it: not the temporary's name
        src.read(NIFTI1_HEADER)
        dst.write(header.binaryblock)
        shutil.copyfileobj(src, dst, 1 << 20)
    return True

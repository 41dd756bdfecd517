"""The NIfTI header fields that place the voxels, kept from an input (``ImageData.meta["nifti"]``) and put back
into its outputs' headers by any NIfTI writer, whichever reader read it.

A NIfTI header holds two orientations, each with a code saying what space it maps to: the qform (often the
scanner) and the sform (often a registration: an aligned space, a template such as MNI). Readers keep one as the
image's geometry (ITK one of them, nibabel the sform first), so an output written from that geometry alone sits
elsewhere than its input for every viewer that reads the other. The fields are plain values: one reader's
record serves another distribution's writer. Nothing here imports nibabel: a header is anything indexable by
field name (a nibabel header, MONAI's metadata).
"""

from __future__ import annotations

from typing import Any

#: the codes, the qform's quaternion, offset and handedness (``pixdim[0]``), the spacing and its unit (which the
#: offsets and rows are in), the sform's rows
FIELDS = ("qform_code", "sform_code", "quatern_b", "quatern_c", "quatern_d", "qoffset_x", "qoffset_y", "qoffset_z",
          "pixdim", "xyzt_units", "srow_x", "srow_y", "srow_z")
META_KEY = "nifti"


def header_forms(header: Any) -> dict[str, Any] | None:
    """The placing fields of a NIfTI-1 header, with its grid's size (``dim``); None when any is missing."""
    import numpy as np

    try:
        forms = {k: np.asarray(header[k]).tolist() for k in (*FIELDS, "dim")}
    except (KeyError, ValueError, TypeError):
        return None
    if not (isinstance(forms["pixdim"], list) and len(forms["pixdim"]) >= 4 and isinstance(forms["dim"], list)
            and len(forms["dim"]) >= 4):
        return None
    forms["pixdim"] = forms["pixdim"][:4]  # handedness and the three spatial spacings
    forms["dim"] = forms["dim"][1:4]
    return forms


def apply_forms(header: Any, forms: dict[str, Any]) -> bool:
    """Put ``forms`` into ``header`` when it describes the same grid; whether it did."""
    import numpy as np

    if np.asarray(header["dim"])[1:4].tolist() != forms.get("dim"):
        return False  # another grid than the input's: its fields would misplace it
    for key in FIELDS:
        if key == "pixdim":
            pixdim = np.array(header["pixdim"], copy=True)
            pixdim[:4] = forms[key]
            header["pixdim"] = pixdim
        else:
            header[key] = forms[key]
    return True

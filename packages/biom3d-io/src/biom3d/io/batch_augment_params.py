"""Params of ``io/batch-augment`` (light: imported by plugin.py at discovery)."""

from __future__ import annotations

from biom3d.io.dataset_params import PatchDatasetParams


class BatchAugmentParams(PatchDatasetParams):
    """io/patch-dataset's fields and defaults, the same probabilities and ranges: only where the augmentations
    run changes (on whole batches on the training device). With ``p_rotate > 0`` every training crop is the
    enlarged one, since the rotation is drawn on the device."""

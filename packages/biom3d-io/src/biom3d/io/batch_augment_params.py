"""Params of ``io/batch-augment`` (light: imported by plugin.py at discovery)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from biom3d.io.dataset_params import PatchDatasetParams


class BatchAugmentParams(PatchDatasetParams):
    """io/patch-dataset's fields and defaults, the same probabilities and ranges: only where the augmentations
    run changes (on whole batches). The loader's workers draw the rotations, so that only the rotated samples
    carry the enlarged crop."""

    run_on: Literal["auto", "device", "workers"] = Field(
        "auto",
        description="Where the batches are augmented: 'device' in the training process once the batch is on the "
                    "training device (a GPU's kernels outrun the workers), 'workers' in the loader's workers right "
                    "after collating (on a CPU the training process is busy with the network, the workers are not); "
                    "'auto' is 'workers' when training on a CPU with train.workers > 0, else 'device'.",
    )

"""biom3d-io plugin entry: hookimpls and params models only (no heavy imports).

tifffile, SimpleITK and numpy are imported by the ``biom3d.io.readers`` / ``biom3d.io.writers`` targets, when
a reader or writer is built. The registry picks a reader by the longest matching suffix (so ``.ome.tif`` goes
to ``ome-tiff``, ``.tif`` to ``tiff``), or the ``dicom`` reader for a folder.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from biom3d.core import hookimpl
from biom3d.core.specs import DatasetSpec, NoParams, ReaderSpec, WriterSpec
from biom3d.io.batch_augment_params import BatchAugmentParams
from biom3d.io.dataset_params import PatchDatasetParams

# First-party formats sit above a plugin's default priority 0, so installing a plugin that also reads, say,
# .nii.gz does not change which reader an existing setup uses; a plugin that means to take over says so.
PRIORITY = 10

TIFF = (".tif", ".tiff")
OME_TIFF = (".ome.tif", ".ome.tiff")
SITK = (".nii", ".nii.gz", ".mha", ".mhd", ".nrrd", ".nhdr")


class NpyReaderParams(BaseModel):
    model_config = ConfigDict(extra="forbid", defer_build=True)
    mmap: bool = Field(
        False, description="Memory-map the file instead of loading it (large volumes); the array is then read-only."
    )


class WriterParams(BaseModel):
    model_config = ConfigDict(extra="forbid", defer_build=True)
    overwrite: bool = Field(
        False, description="Replace an existing file. Without it, writing over an existing file is an error."
    )


class CompressedWriterParams(WriterParams):
    compress: bool = Field(
        True, description="Compress pixel data losslessly (zlib for OME-TIFF, gzip for MHA/NRRD; .nii.gz always is)."
    )


@hookimpl
def biom3d_readers():
    yield ReaderSpec(
        name="npy",
        target="biom3d.io.readers:build_npy_reader",
        params=NpyReaderParams,
        suffixes=(".npy",),
        priority=PRIORITY,
        summary="NumPy .npy arrays (no spacing); optionally memory-mapped.",
    )
    yield ReaderSpec(
        name="tiff",
        target="biom3d.io.readers:build_tiff_reader",
        params=NoParams,
        suffixes=TIFF,
        priority=PRIORITY,
        summary="TIFF via tifffile; axes and spacing (µm) from ImageJ or OME metadata.",
    )
    yield ReaderSpec(
        name="ome-tiff",
        target="biom3d.io.readers:build_ome_tiff_reader",
        params=NoParams,
        suffixes=OME_TIFF,
        priority=PRIORITY,
        summary="OME-TIFF via tifffile; axes and spacing (µm) from OME-XML PhysicalSize.",
    )
    yield ReaderSpec(
        name="sitk",
        target="biom3d.io.readers:build_sitk_reader",
        params=NoParams,
        suffixes=SITK,
        priority=PRIORITY,
        summary="NIfTI, MetaImage, NRRD via SimpleITK, with spacing, origin and direction.",
    )
    yield ReaderSpec(
        name="dicom",
        target="biom3d.io.readers:build_dicom_reader",
        params=NoParams,
        directory=True,
        priority=PRIORITY,
        summary="A folder holding a DICOM series, via SimpleITK (the largest series if several).",
    )


@hookimpl
def biom3d_writers():
    yield WriterSpec(
        name="npy",
        target="biom3d.io.writers:build_npy_writer",
        params=WriterParams,
        suffixes=(".npy",),
        priority=PRIORITY,
        summary="NumPy .npy, the array as given (no metadata).",
    )
    yield WriterSpec(
        name="tiff",
        target="biom3d.io.writers:build_tiff_writer",
        params=WriterParams,
        suffixes=TIFF,
        priority=PRIORITY,
        summary="ImageJ TIFF carrying the input's spacing (resolution, spacing, unit).",
    )
    yield WriterSpec(
        name="ome-tiff",
        target="biom3d.io.writers:build_ome_tiff_writer",
        params=CompressedWriterParams,
        suffixes=OME_TIFF,
        priority=PRIORITY,
        summary="OME-TIFF carrying the input's spacing (PhysicalSize).",
    )
    yield WriterSpec(
        name="sitk",
        target="biom3d.io.writers:build_sitk_writer",
        params=CompressedWriterParams,
        suffixes=SITK,
        priority=PRIORITY,
        summary="NIfTI, MetaImage, NRRD via SimpleITK with the input's spacing, origin, direction (DICOM -> .nii.gz).",
    )


@hookimpl
def biom3d_datasets():
    yield DatasetSpec(
        name="patch-dataset",
        aliases=("SegPatchFast",),
        target="biom3d.io.datasets:build_patch_data",
        params=PatchDatasetParams,
        summary="Memory-mapped patches, foreground per batch as the paper, rotation-aware crop, the paper's TorchIO augmentations.",
    )
    yield DatasetSpec(
        name="batch-augment",
        target="biom3d.io.batch_augment:build_batch_augment_data",
        params=BatchAugmentParams,
        summary="patch-dataset's crops and augmentations, the augmentations batched on the training device (GPU).",
    )

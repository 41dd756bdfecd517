"""The tables of the import: the original's module names and keys, and what they become here.

The original picked each module by name from its register (``{fct: Name, kwargs: {...}}``); a name it did not
have is refused, naming the key, rather than mapped to something that might train differently.
"""

from __future__ import annotations

# The original's register, per config key that picks a module from it.
DATASETS = ("SegPatchFast", "Torchio", "BatchGen")
MODELS = ("UNet3DVGGDeep", "EffUNet", "VGG3D", "Eff3D", "SwinUNETR")
METRICS = ("Dice", "DiceBCE", "DiceCEnnUNet", "IoU", "MSE", "CE", "DeepMSE", "DeepDiceBCE")
TRAINERS = ("SegTrain", "SegVal", "SegPatchTrain", "SegPatchVal")
PREPROCESSORS = ("Seg",)
PREDICTORS = ("Seg", "SegPatch")
POSTPROCESSORS = ("Seg",)

# Our components, by qualified id: the import names each one explicitly, whatever stack is installed.
PREPROCESS = "core/seg-preprocess"
DATASET = "io/patch-dataset"
TRAINER = "core/seg-trainer"
PREDICTOR = "core/sliding-window"
DEEP = "models/deep-supervision"
UNET = "models/unet3d-vgg-deep"
LOSS_DEFAULT = "models/dice-ce"

# What the original's training loop did around every run, in our callback names (all core's own): its
# scheduler, checkpoints, CSV log, progress bar, curves and (USE_IMAGE_CLBK) image snapshots.
ORIGINAL_CALLBACKS = ("lr-schedule", "checkpoint", "csv-log", "progress", "curves", "snapshots")
# The original's optimizer, hard-coded in its builder and trainer: SGD, Nesterov momentum 0.99, gradients
# clipped at norm 12.
ORIGINAL_OPTIMIZER = {"optimizer": "sgd", "momentum": 0.99, "nesterov": True, "grad_clip": 12.0}
SOFT_DICE_ORIGINAL_SMOOTH = 1.0  # the original's Dice and DiceBCE smoothed with 1, ours default to 1e-5

RENAMED = {"IMG_DIR": "IMG_PATH", "MSK_DIR": "MSK_PATH", "FG_DIR": "FG_PATH"}  # keys of configs before 0.1
SIGNATURE = {"NUM_CLASSES", "MODEL", "TRAIN_LOSS", "IMG_PATH", "PATCH_SIZE", "NB_EPOCHS", "TRAIN_DATASET", "DESC"}
SILENT_TOP = {"PIN_MEMORY", "IS_2D"}  # no effect here, nothing to report
SCHEDULER_CALLBACKS = ("USE_FG_CLBK", "USE_WD_CLBK", "USE_MOMENTUM_CLBK", "USE_OVERLAP_CLBK",
                       "USE_GLOBAL_SCALE_CLBK", "USE_DATASET_SIZE_CLBK")

"""Saving the probabilities a prediction averaged, before post-processing: for uncertainty, calibration or an
ensemble of one's own (nnU-Net's ``--save_probabilities``)."""

from pathlib import Path

import numpy as np

from biom3d.core.atomic import atomic_write
from biom3d.core.errors import InputError

SUFFIX = ".npz"


def save_probabilities(path: Path, probs: np.ndarray, image, context) -> None:
    """One image's probabilities as a compressed NumPy archive (``np.load(path)``), written atomically:
    ``probabilities`` (C, [D,] H, W) float16 on the input's grid (softmax channels with the background first, or
    one sigmoid channel per label), ``activation``, and ``spacing`` (empty when the input has none). float16 keeps
    three decimals of a probability at half the size of nnU-Net's float32 ``--save_probabilities``."""
    arrays = {"probabilities": probs.astype(np.float16),
              "activation": np.array("sigmoid" if context.multilabel else "softmax"),
              "spacing": np.asarray(image.spacing if image.spacing is not None else (), dtype=np.float64)}
    atomic_write(path, lambda f: np.savez_compressed(f, **arrays))


def probabilities_folder(probabilities: str | Path | None, output: Path, root: Path | None) -> Path | None:
    """The folder to save probabilities in. The masks' folder ``output``, and a folder inside it or inside the
    input folder ``root`` (None for a single input file), are refused: `biom3d eval` and a later prediction
    would read the archives there as masks or images, and stop at them as unknown files."""
    if probabilities is None:
        return None
    folder = Path(probabilities)
    if folder.resolve().is_relative_to(output.resolve()):
        raise InputError(f"--probabilities {folder} is the --output folder or inside it: choose a folder of its "
                         f"own (e.g. {output.parent / (output.name + '-probabilities')}), so that the masks' folder "
                         "holds masks")
    if root is not None and folder.resolve().is_relative_to(root.resolve()):
        raise InputError(f"--probabilities {folder} is inside the input folder {root}: a later prediction would "
                         "read its archives as images; choose a folder outside it")
    return folder

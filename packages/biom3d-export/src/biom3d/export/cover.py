"""Cover images of a bioimage.io package (2:1, PNG, well under bioimage.io's 500 KB): the middle slice of the
test input beside the same slice with the model's prediction overlaid, and the run's last validation snapshot
fitted onto a 2:1 canvas."""

from __future__ import annotations

from pathlib import Path

import numpy as np

PANEL = 256  # pixels per side of each half of the cover
COLOURS = np.array([[255, 220, 0], [0, 200, 255], [255, 80, 80], [120, 255, 120], [200, 120, 255]], np.float32)


def overlay_cover(path: Path, image: np.ndarray, probs: np.ndarray, *, multilabel: bool) -> Path:
    """``image`` (C, D, H, W) and ``probs`` (K, D, H, W): its first channel's middle z slice, grey, and the same
    slice with each class's mask (argmax, or > 0.5 for multi-label) tinted."""
    from PIL import Image

    z = image.shape[1] // 2
    grey = _grey(image[0, z])
    mask = probs[:, z] > 0.5 if multilabel else (np.arange(1, probs.shape[0])[:, None, None] == probs[:, z].argmax(0))
    tinted = np.repeat(grey[..., None], 3, axis=2).astype(np.float32)
    for k, m in enumerate(mask):
        tinted[m] = 0.45 * tinted[m] + 0.55 * COLOURS[k % len(COLOURS)]
    left = _panel(Image.fromarray(np.repeat(grey[..., None], 3, axis=2)))
    right = _panel(Image.fromarray(tinted.clip(0, 255).astype(np.uint8)))
    cover = Image.new("RGB", (2 * PANEL, PANEL), "white")
    cover.paste(left, (0, 0))
    cover.paste(right, (PANEL, 0))
    cover.save(path, optimize=True)
    return path


def snapshot_cover(folder: Path, path: Path) -> Path | None:
    """The newest ``snapshots/*.png`` of the run on a white 2:1 canvas, or None when the run has none."""
    from PIL import Image

    shots = sorted(Path(folder).glob("*.png")) if Path(folder).is_dir() else []
    if not shots:
        return None
    with Image.open(shots[-1]) as shot:
        shot = shot.convert("RGB")
        width = max(shot.width, 2 * shot.height)
        canvas = Image.new("RGB", (width, width // 2), "white")
        canvas.paste(shot, ((width - shot.width) // 2, (width // 2 - shot.height) // 2))
    if canvas.width > 1024:
        canvas = canvas.resize((1024, 512), Image.LANCZOS)
    canvas.save(path, optimize=True)
    return path


def _grey(slice_: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(slice_, (1, 99))
    return (255 * np.clip((slice_ - lo) / max(hi - lo, 1e-8), 0, 1)).astype(np.uint8)


def _panel(img):
    """``img`` scaled (nearest: voxels stay visible) to fit a PANEL x PANEL square, centred on white."""
    from PIL import Image

    scale = PANEL / max(img.width, img.height)
    img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.NEAREST)
    panel = Image.new("RGB", (PANEL, PANEL), "white")
    panel.paste(img, ((PANEL - img.width) // 2, (PANEL - img.height) // 2))
    return panel

"""Cross-validation folds, stored in ``folds.csv`` (``filename,fold``) next to the preprocessed data."""

from __future__ import annotations

import csv
import io
import random
from collections.abc import Sequence
from pathlib import Path

from biom3d.core.atomic import atomic_write_text
from biom3d.core.errors import DataError


def num_folds_for(n_images: int) -> int:
    """5 folds; under 10 images, max(N // 2, 2) (the paper's rule)."""
    return 5 if n_images >= 10 else max(n_images // 2, 2)


def make_folds(names: Sequence[str], *, seed: int = 42, num_folds: int | None = None) -> dict[str, int]:
    """Balanced, shuffled fold indices, deterministic for ``seed`` whatever the input order."""
    names = sorted(names)
    if len(names) < 2:
        raise ValueError("folds need at least two images; a single image is split in two by the preprocessor")
    k = num_folds or num_folds_for(len(names))
    order = list(names)
    random.Random(seed).shuffle(order)
    return {name: i % k for i, name in enumerate(order)}


def write_folds(path: Path, folds: dict[str, int]) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["filename", "fold"])
    for name in sorted(folds):
        writer.writerow([name, folds[name]])
    atomic_write_text(path, buf.getvalue())


def read_folds(path: Path, fold: int) -> tuple[list[str], list[str]]:
    """(training names, validation names) for ``fold``; errors name the file and the valid folds."""
    table = fold_table(path)
    available = sorted({f for _, f in table})
    if fold not in available:
        raise DataError(f"fold {fold} is not in {path} (folds: {available}); set train.fold / --fold to one of them")
    train = [n for n, f in table if f != fold]
    val = [n for n, f in table if f == fold]
    return train, val


def fold_table(path: Path) -> list[tuple[str, int]]:
    """(name, fold) rows of a folds file; errors name the file."""
    if not path.is_file():
        raise DataError(f"folds file {path} does not exist; run `biom3d preprocess` or set data.folds in the config")
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows or not {"filename", "fold"} <= set(rows[0]):
        raise DataError(f"{path}: expected a CSV with columns 'filename,fold'")
    try:
        return [(r["filename"], int(r["fold"])) for r in rows]
    except ValueError as exc:
        raise DataError(f"{path}: fold values must be integers ({exc})") from exc

"""`biom3d eval`: Dice and IoU between a folder of predictions and a folder of ground truths, paired by
name (never by sort order), per file, per class and mean; written to a CSV table. With ``distances``, also
HD95 and ASSD (:mod:`biom3d.core.surface`) in the ground truth's spacing units (the prediction's where the truth
has none; voxels where neither has).

Masks may be 0/1, 0/255 or label maps (2D or 3D), or 4D multi-label masks. A class absent from both the
prediction and the truth scores 1 (perfect agreement), so Dice means are never NaN; a distance with one mask
empty is undefined, left out of its mean and counted. An existing CSV is the user's: it is replaced only when
asked (``overwrite``), and that is checked before any mask is read. A ground truth stored in another
orientation than its prediction (by their headers) is put on the prediction's grid first, as for training.
"""

from __future__ import annotations

import csv
import io
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from biom3d.core.alignment import align_mask
from biom3d.core.atomic import atomic_write_text
from biom3d.core.errors import DataError, InputError
from biom3d.core.imagedata import mask_channels_first
from biom3d.core.scan import scan_dataset
from biom3d.core.surface import SURFACE_METRICS, surface_distances

log = logging.getLogger("biom3d")
OVERLAP_METRICS = ("dice", "iou")


@dataclass
class EvalReport:
    rows: list[dict[str, object]] = field(default_factory=list)  # file, class, then one value per metric
    classes: list[int] = field(default_factory=list)
    metrics: tuple[str, ...] = OVERLAP_METRICS
    unit: str | None = None  # of the distances: "um", "mm", "voxel"; several joined by ", "

    def mean(self, metric: str, cls: int | None = None) -> float:
        """Over the defined values (a distance with one mask empty is not)."""
        values = [v for v in self._values(metric, cls) if not np.isnan(v)]
        return float(np.mean(values)) if values else float("nan")

    def undefined(self, metric: str) -> int:
        return sum(1 for v in self._values(metric, None) if np.isnan(v))

    def table(self) -> str:
        files = sorted({str(r["file"]) for r in self.rows})
        width = max([len(f) for f in files] + [8])
        head = f"{'file':<{width}}  " + "  ".join(
            " ".join(f"{f'{m}_{c}':<9}" for m in self.metrics) for c in self.classes)
        lines = [head]
        for f in files:
            by_class = {r["class"]: r for r in self.rows if r["file"] == f}
            lines.append(f"{f:<{width}}  " + "  ".join(
                " ".join(f"{by_class[c][m]:<9.4f}" for m in self.metrics) for c in self.classes))
        lines.append(f"{'mean':<{width}}  " + "  ".join(
            " ".join(f"{self.mean(m, c):<9.4f}" for m in self.metrics) for c in self.classes))
        lines.append(f"mean Dice {self.mean('dice'):.4f}  mean IoU {self.mean('iou'):.4f}  ({len(files)} files)")
        if self.metrics != OVERLAP_METRICS:
            left_out = self.undefined("hd95")
            lines.append(f"mean HD95 {self.mean('hd95'):.4f}  mean ASSD {self.mean('assd'):.4f}  ({self.unit}"
                         + (f"; {left_out} file-class pair(s) with one mask empty left out" if left_out else "")
                         + ("; the units differ between files, so these means mix them" if "," in (self.unit or "")
                            else "") + ")")
        return "\n".join(line.rstrip() for line in lines)

    def to_csv(self) -> str:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        unit = [] if self.metrics == OVERLAP_METRICS else ["unit"]
        writer.writerow(["file", "class", *self.metrics, *unit])
        tail = [self.unit] if unit else []
        for r in sorted(self.rows, key=lambda r: (str(r["file"]), r["class"])):
            writer.writerow([r["file"], r["class"], *(f"{r[m]:.6f}" for m in self.metrics),
                             *([r["unit"]] if unit else [])])
        for c in self.classes:
            writer.writerow(["mean", c, *(f"{self.mean(m, c):.6f}" for m in self.metrics), *tail])
        writer.writerow(["mean", "all", *(f"{self.mean(m):.6f}" for m in self.metrics), *tail])
        return buf.getvalue()

    def _values(self, metric: str, cls: int | None) -> list[float]:
        return [float(r[metric]) for r in self.rows if cls is None or r["class"] == cls]


def evaluate(pred_dir: str | Path, truth_dir: str | Path, *, num_classes: int | None = None,
             csv_path: str | Path | None = None, overwrite: bool = False, reader: str | None = None,
             distances: bool = False, registry=None) -> EvalReport:
    """``reader`` (the config's ``reader:`` / ``--reader``) reads every file it claims, the others go by suffix.
    ``distances`` adds HD95 and ASSD to Dice and IoU."""
    from biom3d.core.context import RunContext
    from biom3d.core.discovery import get_registry

    if csv_path is not None and Path(csv_path).exists() and not overwrite:
        raise InputError(f"{csv_path} already exists: biom3d does not replace files silently; pass --overwrite to "
                         "replace it or choose another --csv")
    registry = registry or get_registry()
    cases = scan_dataset(Path(pred_dir), Path(truth_dir), registry, names=("prediction", "ground truth"), reader=reader)
    ctx = RunContext()
    read = lambda item: registry.resolve("reader", item.reader).build({}, ctx)(item.path)  # noqa: E731
    pairs, problems, grids = [], [], {}
    for case in cases:
        pred_image, truth_image = read(case.image), read(case.mask)
        stored = np.asarray(truth_image.array)
        aligned, notes = align_mask(stored, truth_image, pred_image, what="ground truth")
        for note in notes:
            log.warning(note)
        reoriented = aligned is not stored
        if reoriented:  # on the prediction's grid now: its spacing is the one the distances are measured in
            truth_image = replace(truth_image, array=aligned, spacing=pred_image.spacing,
                                  meta={**(truth_image.meta or {}), "unit": (pred_image.meta or {}).get("unit")})
        pred, truth = _channels_first(pred_image), _channels_first(truth_image)
        if pred.ndim == 4 and truth.ndim == 3 and pred.shape[1:] == truth.shape:
            truth = _one_hot(truth, pred.shape[0], f"ground truth {case.mask.path}")
        elif truth.ndim == 4 and pred.ndim == 3 and truth.shape[1:] == pred.shape:
            pred = _one_hot(pred, truth.shape[0], f"prediction {case.image.path}")
        if pred.shape != truth.shape and max(pred.ndim, truth.ndim) <= 3 and pred.squeeze().shape == truth.squeeze().shape:
            pred, truth = pred.squeeze(), truth.squeeze()  # a 2D mask stored as (1, H, W) beside one as (H, W)
        if pred.shape != truth.shape:
            problems.append(f"{case.key}: prediction {pred.shape} vs ground truth {truth.shape}")
            continue
        pairs.append((case.key, pred, truth))
        grids[case.key] = _grid(truth_image, pred_image)
    if problems:
        raise DataError("predictions and ground truths differ in shape:\n  " + "\n  ".join(problems[:10])
                        + "\nThey must be on the same grid (predictions are written on the input image's grid).")
    if num_classes is None:
        num_classes = _classes_found(pairs)
    labelled = [(k, _labels(p, num_classes, f"prediction {k}"), _labels(t, num_classes, f"ground truth {k}"))
                for k, p, t in pairs]
    multilabel = any(t.ndim == 4 for _, _, t in labelled)
    report = EvalReport(classes=list(range(1, num_classes + 1)),
                        metrics=OVERLAP_METRICS + (SURFACE_METRICS if distances else ()))
    if distances:
        report.unit = ", ".join(sorted({unit for _, unit in grids.values()}))
    for key, pred, truth in labelled:
        spacing, unit = grids[key]
        for c in report.classes:
            p = pred[c - 1] > 0 if multilabel else pred == c
            t = truth[c - 1] > 0 if multilabel else truth == c
            row = {"file": key, "class": c, **scores(p, t)}
            if distances:
                row.update(surface_distances(p, t, spacing), unit=unit)
            report.rows.append(row)
    if csv_path is not None:
        atomic_write_text(Path(csv_path), report.to_csv())
    return report


def scores(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Dice = 2|P∩T| / (|P| + |T|) and IoU = |P∩T| / |P∪T|; both 1 when P and T are empty."""
    inter = float(np.logical_and(pred, truth).sum())
    total = float(pred.sum()) + float(truth.sum())
    if total == 0:
        return {"dice": 1.0, "iou": 1.0}
    return {"dice": 2 * inter / total, "iou": inter / (total - inter)}


def _classes_found(pairs: list[tuple[str, np.ndarray, np.ndarray]]) -> int:
    """Without --num-classes, the classes of the whole dataset, not of each file: the largest label of the files
    that hold several (label maps), else 1 (every file binary: 0/1, 0/255). A file of a multi-class set that
    holds label 2 alone then stays label 2; judged by itself it looked binary and was scored as class 1."""
    channels = [a.shape[0] for _, p, t in pairs for a in (p, t) if a.ndim == 4]
    if channels:
        return max(channels)
    found = 1
    for _, pred, truth in pairs:
        for array in (pred, truth):
            foreground = np.unique(array)
            foreground = foreground[foreground > 0]
            if len(foreground) > 1:
                found = max(found, int(foreground.max()))
    return found


def _grid(truth, pred) -> tuple[tuple[float, ...] | None, str]:
    """The spacing the distances are measured in, and its unit: the truth's, else the prediction's, else voxels."""
    for image in (truth, pred):
        if image.spacing is not None:
            return tuple(image.spacing), str((image.meta or {}).get("unit") or "spacing units")
    return None, "voxel"


def _channels_first(image) -> np.ndarray:
    """A label map as stored, or a multi-label mask as (K, D, H, W) (a 2D one: (K, 1, H, W))."""
    array = mask_channels_first(np.asarray(image.array), (image.meta or {}).get("axes"), image.path)
    return array.squeeze() if array.ndim > 4 else array


def _one_hot(labels: np.ndarray, channels: int, what: str) -> np.ndarray:
    """A label map as the (K, D, H, W) channels of the multi-label mask it is scored against: channel k is label k
    (any foreground for a single channel, so 0/255 masks count). A label past K would go unscored: refused."""
    if channels == 1:
        return (labels > 0)[None].astype(np.uint8)
    highest = int(labels.max(initial=0))
    if highest > channels:
        raise DataError(f"{what} holds label {highest}, but the mask it is scored against has {channels} channels; "
                        "give label maps of 0..K for K channels")
    return np.stack([labels == k for k in range(1, channels + 1)]).astype(np.uint8)


def _labels(array: np.ndarray, num_classes: int | None, what: str) -> np.ndarray:
    """0/255 and other two-level binary masks -> 0/1; label maps kept; more labels than classes refused."""
    values = np.unique(array)
    if array.ndim == 4:
        return (array > 0).astype(np.uint8)
    if len(values) == 2 and values[0] == 0 and (num_classes in (None, 1) or values[1] > (num_classes or 1)):
        return (array > 0).astype(np.uint8)
    if np.any(np.mod(values, 1) != 0) or values.min() < 0:
        raise DataError(f"{what}: values {values[:6].tolist()} are not class labels")
    if num_classes is not None and values.max() > num_classes:
        raise DataError(f"{what}: labels up to {int(values.max())} but --num-classes is {num_classes}")
    return array.astype(np.int64)

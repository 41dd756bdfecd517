"""Find images and masks and pair them by relative name, before any work starts.

A case's key is its path relative to the folder with the reader's suffix removed (``sub/case01``), so
``case01.tif`` pairs with ``case01.nii.gz``. Every problem (missing partner, duplicate name, unknown format)
is collected and reported in one error.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from biom3d.core.errors import DataError

log = logging.getLogger("biom3d")

DICOM_SUFFIXES = (".dcm", ".ima")
NOT_IMAGES = (".csv", ".json", ".txt", ".md", ".log", ".yaml", ".yml", ".pdf", ".html")  # reports beside data
MAX_LISTED = 10
HEADER_BYTES = 1 << 16  # MetaImage and NRRD headers are text lines of a few hundred bytes
DATA_FILE_FIELDS = {".mhd": ("=", ("elementdatafile",)), ".nhdr": (":", ("data file", "datafile"))}


@dataclass(frozen=True)
class Item:
    """One image file (or DICOM folder) with its case key and the reader chosen for it."""

    key: str
    path: Path
    reader: str  # qualified id of the reader


@dataclass(frozen=True)
class Case:
    key: str
    image: Item
    mask: Item | None


def scan_folder(folder: Path, registry, *, what: str = "images", reader: str | None = None) -> list[Item]:
    """Every readable item under ``folder``, sorted by key; unknown files are errors, not skipped silently.
    ``reader`` (the config's ``reader:`` / ``--reader``) reads every file it claims; the others go by suffix."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{what} folder {folder} does not exist (or is not a folder); check the path")
    if reader:
        registry.resolve("reader", reader)  # an unknown choice is one error, not one per file
    items: list[Item] = []
    problems: list[str] = []
    seen: dict[str, Path] = {}
    entries = list(_entries(folder))
    detached = detached_data(entries)
    for path in entries:
        if path in detached:  # a .mhd's .raw, a .nhdr's data: read with its header
            continue
        comp, key, why = _choose(path, folder, registry, reader)
        if comp is None:
            problems.append(f"{path.relative_to(folder)}: {why}")
            continue
        if key in seen:
            problems.append(f"{path.relative_to(folder)} and {seen[key].relative_to(folder)} have the same name '{key}'")
            continue
        seen[key] = path
        items.append(Item(key, path, comp.qid))
    if problems:
        raise DataError(_listing(f"{what} folder {folder} has {len(problems)} problem(s)", problems,
                                 "Known suffixes: " + ", ".join(registry.suffixes("reader")) + "."))
    if not items:
        raise DataError(
            f"{what} folder {folder} holds no image files; supported: {', '.join(registry.suffixes('reader'))}"
        )
    return sorted(items, key=lambda i: i.key)


def pair(images: list[Item], masks: list[Item] | None, *, images_dir: Path, masks_dir: Path | None,
         names: tuple[str, str] = ("image", "mask")) -> list[Case]:
    """Pair images with masks by key; list every unmatched file in one error."""
    if masks is None:
        return [Case(i.key, i, None) for i in images]
    by_key = {m.key: m for m in masks}
    image_keys = {i.key for i in images}
    a, b = names
    problems = [f"{a} {i.path.relative_to(images_dir)} has no {b} in {masks_dir}" for i in images if i.key not in by_key]
    problems += [f"{b} {m.path.relative_to(masks_dir)} has no {a} in {images_dir}" for m in masks if m.key not in image_keys]
    if problems:
        raise DataError(_listing(f"{a}s and {b}s do not pair up", problems,
                                 f"{b.capitalize()}s pair with {a}s by file name (without suffix) and sub-folder."))
    return [Case(i.key, i, by_key[i.key]) for i in images]


def scan_dataset(images_dir: Path, masks_dir: Path | None, registry,
                 names: tuple[str, str] = ("image", "mask"), reader: str | None = None) -> list[Case]:
    images = scan_folder(images_dir, registry, what=names[0] + "s", reader=reader)
    masks = scan_folder(masks_dir, registry, what=names[1] + "s", reader=reader) if masks_dir is not None else None
    return pair(images, masks, images_dir=Path(images_dir), masks_dir=None if masks_dir is None else Path(masks_dir),
                names=names)


def scan_input(path: Path, registry, reader: str | None = None) -> tuple[Path, list[Item]]:
    """A single file (or DICOM folder) or a folder of them, as (root, items)."""
    path = Path(path)
    if path.is_file() or (path.is_dir() and _is_series(path)):
        comp, key, why = _choose(path, path.parent, registry, reader)
        if comp is None:
            raise DataError(f"{path}: {why}")
        return path.parent, [Item(key, path, comp.qid)]
    return path, scan_folder(path, registry, what="input", reader=reader)


def detached_data(paths: list[Path]) -> set[Path]:
    """The data files that MetaImage (``.mhd``: ``ElementDataFile = case.raw``) and detached NRRD (``.nhdr``:
    ``data file: case.raw.gz``) headers among ``paths`` name: they are part of their header's image, not images
    of their own. A header that cannot be read names none (its reader reports it)."""
    named: set[Path] = set()
    for path in paths:
        rule = DATA_FILE_FIELDS.get(path.suffix.lower())
        if rule is None:
            continue
        separator, fields = rule
        try:
            with open(path, encoding="latin-1") as f:
                header = f.read(HEADER_BYTES)
        except OSError:
            continue
        for line in header.splitlines():
            field, sep, value = line.partition(separator)
            value = value.strip()
            # LOCAL: the data follows the header; LIST and %d patterns name many files (left to the reader); a
            # name may hold spaces ("case 0.raw")
            many = value.upper().startswith("LIST") or "%" in value
            if sep and field.strip().lower() in fields and value and value.upper() != "LOCAL" and not many:
                named.add((path.parent / value).resolve())
    return {p for p in paths if p.resolve() in named}


def _entries(folder: Path, scanned: list[Path] | None = None):
    """Files, plus folders that hold a DICOM series (yielded once, their files skipped). A linked folder is
    followed unless it leads back into a folder already scanned (``sub -> .``, ``loop -> ..``): that would
    repeat cases (and leak validation images into training) or climb out of the folder, so it is skipped
    with a warning that says so."""
    scanned = [folder.resolve()] if scanned is None else scanned
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path.suffix.lower() in NOT_IMAGES:
            continue
        if path.is_dir():
            if path.is_symlink() and not _follow(path, scanned):
                continue
            if _is_series(path):
                yield path
            else:
                yield from _entries(path, scanned)
        elif path.is_file():
            yield path


def _follow(link: Path, scanned: list[Path]) -> bool:
    """Whether to scan the folder ``link`` points to; records it as scanned when so."""
    target = link.resolve()
    if any(done.is_relative_to(target) for done in scanned):
        log.warning("%s -> %s: a symbolic link loop (it leads back to %s, already being scanned); not followed",
                    link, os.readlink(link), target)
        return False
    if any(target.is_relative_to(done) for done in scanned):
        log.warning("%s -> %s: a symbolic link into %s, already scanned; not followed (its files would count "
                    "twice)", link, os.readlink(link), target)
        return False
    scanned.append(target)
    return True


def _is_series(folder: Path) -> bool:
    return any(p.suffix.lower() in DICOM_SUFFIXES or p.name == "DICOMDIR" for p in folder.iterdir() if p.is_file())


def _choose(path: Path, root: Path, registry, reader: str | None):
    """(reader, case key, None), or (None, None, why not) for a file no reader takes."""
    from biom3d.core.registry import FormatTie, ResolutionError

    try:
        comp = registry.reader_for(path, reader)
    except FormatTie as exc:
        return None, None, exc.reason
    except ResolutionError:
        return None, None, "no reader for this file type"
    rel = path.relative_to(root).as_posix()
    suffix = comp.spec.matches(path.name) if not path.is_dir() else None
    key = rel[: -len(suffix)] if suffix else rel
    return comp, key, None


def _listing(head: str, problems: list[str], hint: str) -> str:
    shown = problems[:MAX_LISTED]
    more = f"\n  ... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
    return head + ":\n  " + "\n  ".join(shown) + more + "\n" + hint

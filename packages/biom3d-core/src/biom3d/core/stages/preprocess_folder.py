"""The output folder of `biom3d preprocess`: whose it is (``preprocess.json``, the record of the data and settings
that wrote it), so that a re-run resumes its own folder and never replaces anything else silently."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from biom3d.core.atomic import atomic_write_text, is_temporary, remove_stale_temporaries
from biom3d.core.errors import DataError
from biom3d.core.runs import read_record

log = logging.getLogger("biom3d")


def claim_output(out: Path, state: dict[str, Any], overwrite: bool, *, fingerprint: dict[str, Any],
                  defaults: dict[str, Any]) -> None:
    """Take ``out``: a new or empty folder, one this data's own earlier preprocess wrote (resumed, also when an
    earlier biom3d wrote it: see :func:`_as_now`) or, with ``overwrite``, any folder. Anything else is refused:
    the user's files are never replaced silently. The temporaries a killed run left are removed once the folder
    is known to be ours."""
    marker = out / "preprocess.json"
    if out.exists() and not out.is_dir():
        raise DataError(f"{out} is a file, not a folder; choose another --out")
    if not overwrite and marker.is_file():
        try:
            previous = json.loads(marker.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise DataError(f"{marker} cannot be read as the record of an earlier preprocess ({exc}); choose "
                            "another --out or pass --overwrite to replace the folder's files") from exc
        if previous != state and _as_now(previous, state, out, fingerprint, defaults) == state:
            log.info("%s was preprocessed by an earlier biom3d from these images and settings: continuing it (the "
                     "settings and statistics added since take their values now)", out)
        elif previous != state:
            changed = sorted(k for k in state if not isinstance(previous, dict) or previous.get(k) != state[k])
            raise DataError(
                f"{out} already holds data preprocessed from other inputs or settings (differs in: "
                f"{', '.join(changed)}); choose another --out or pass --overwrite to replace it"
            )
    elif not overwrite and out.is_dir():
        foreign = sorted(p.name for p in out.iterdir() if not is_temporary(p))
        if foreign:
            shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
            raise DataError(f"{out} holds files that `biom3d preprocess` of these images did not write ({shown}); "
                            "they are not replaced: choose another --out, or pass --overwrite to replace them")
    atomic_write_text(marker, json.dumps(state, indent=2))
    removed = remove_stale_temporaries(out)
    if removed:
        log.info("removed %d temporary file(s) an interrupted run left in %s", removed, out)


def _as_now(previous: Any, state: dict[str, Any], out: Path, fingerprint: dict[str, Any],
            defaults: dict[str, Any]) -> Any:
    """An earlier version's record as this version would write it for the same data: the preprocessor's params
    added since at their defaults (the behaviour they had before), and its fingerprint when the one it kept agrees
    with today's on every statistic it holds (today's only adds some, such as ``spacing_unit``)."""
    if not isinstance(previous, dict):
        return previous
    now = dict(previous)
    if isinstance(previous.get("params"), dict):
        now["params"] = {**defaults, **previous["params"]}
    kept = read_record(out / "fingerprint.json")
    if not kept:
        return now
    if fingerprint_hash(kept) == previous.get("fingerprint") and earlier_of(kept, fingerprint):
        now["fingerprint"] = state["fingerprint"]
    return now


def earlier_of(kept: Any, fingerprint: dict[str, Any]) -> bool:
    """Whether ``kept`` is ``fingerprint`` as an earlier version wrote it: the same value for every statistic it
    holds, the ones added since missing (its version aside)."""
    today = json.loads(json.dumps(fingerprint))  # as kept on disk: lists, not tuples
    return (isinstance(kept, dict) and kept.keys() < today.keys()
            and all(today[k] == v for k, v in kept.items() if k != "version"))


def fingerprint_hash(fingerprint: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:16]

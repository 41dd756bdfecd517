"""The Data tab: scan an image folder and a mask folder as `biom3d preprocess` would, without writing
anything, and preview the auto-configuration.

The scan pairs files by name (:func:`biom3d.core.scan.scan_dataset`), reads each case with the reader the
registry picks, and runs the chosen stack's preprocessor ``analyse`` on it: shape, spacing, channels and the
corrections preprocessing will make (0/255 masks relabelled, ...). Its fingerprint and plan are the ones
`biom3d preprocess` computes, so the preview is what training will use.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from biom3d.core.errors import Biom3dError
from biom3d.core.units import shown


def scan(images: Path, masks: Path, *, num_classes: int = 1, multilabel: bool = False, stack: str | None = None,
         budget: dict[str, Any] | None = None, registry=None) -> dict[str, Any]:
    """Cases, per-file facts, problems (what stops preprocessing) and notes (what it will correct), the
    fingerprint's medians and the auto-configuration; a problem is reported, never raised."""
    from biom3d.core.config import AutoConfigSettings, Envelope
    from biom3d.core.context import RunContext
    from biom3d.core.discovery import get_registry
    from biom3d.core.scan import scan_dataset
    from biom3d.core.stacks import choose_stack, stack_envelopes

    registry = registry or get_registry()
    result: dict[str, Any] = {"images": str(images), "masks": str(masks), "files": [], "problems": [], "notes": [],
                              "fingerprint": None, "plan": None, "stack": None}
    try:
        cases = scan_dataset(images, masks, registry)
        chosen = choose_stack(registry, stack)
        if chosen is None:
            raise Biom3dError("no installed plugin declares a stack; install one, e.g. pip install biom3d-io "
                              "biom3d-models")
        result["stack"] = chosen.qid
        env = Envelope.model_validate(stack_envelopes(registry, chosen).get("preprocessor") or {})
        comp = registry.resolve("preprocessor", env.name or "")
        ctx = RunContext(num_classes=num_classes, multilabel=multilabel)
        prep = comp.build(env.params, ctx)
        settings = AutoConfigSettings(**(budget or {}))
    except (Biom3dError, ValueError) as exc:
        result["problems"].append(str(exc))
        return result
    stats = []
    for case in cases:
        row: dict[str, Any] = {"key": case.key, "image": str(case.image.path), "mask": str(case.mask.path),
                               "reader": case.image.reader}
        try:
            image = _read(registry, case.image, ctx)
            mask = _read(registry, case.mask, ctx)
            st = prep.analyse(case.key, image, mask)
        except Biom3dError as exc:
            result["problems"].append(str(exc))
            row["problem"] = str(exc)
        except Exception as exc:  # a reader's own failure: name the file, keep scanning the others
            result["problems"].append(f"{case.image.path}: cannot be read ({type(exc).__name__}: {exc})")
            row["problem"] = str(exc)
        else:
            stats.append(st)
            row.update(shape=list(st.shape), spacing=list(st.spacing) if st.spacing else None,
                       spacing_unit=shown(st.unit), channels=st.channels, notes=list(st.warnings))
            result["notes"] += st.warnings
        result["files"].append(row)
    if stats and not result["problems"]:
        try:
            fingerprint = prep.fingerprint(stats)
            result["fingerprint"] = {k: fingerprint.get(k) for k in ("num_images", "median_shape", "spacing",
                                                                     "original_median_shape", "in_channels")}
            result["fingerprint"]["spacing_unit"] = shown(fingerprint.get("spacing_unit"))
            result["plan"] = prep.plan(fingerprint, settings)
            # the shape that plan read, for the page's own plans of an edited patch (another preprocessor: the median)
            plan_median = getattr(prep, "plan_median", None)
            result["fingerprint"]["plan_shape"] = plan_median(fingerprint) if plan_median else fingerprint["median_shape"]
        except Biom3dError as exc:
            result["problems"].append(str(exc))
    return result


def _read(registry, item, ctx):
    return registry.resolve("reader", item.reader).build({}, ctx)(item.path)


def autoconfig(median_shape: Sequence[float], *, num_images: int | None = None, max_dim: int = 128,
               max_pool: int = 5, max_batch: int | None = None, patch_size: Sequence[int] | None = None) -> dict[str, Any]:
    """The paper's auto-configuration for a median shape; with ``patch_size`` (the user's edit), the
    poolings that patch gets by the same rule, and the patch rounded to what those poolings divide."""
    from biom3d.core.builtins.autoconfig import auto_config

    plan = auto_config(median_shape, max_dim=max_dim, max_pool=max_pool, num_images=num_images,
                       max_batch=max_batch).as_dict()
    if patch_size is None:
        return plan
    if len(patch_size) != 3 or any(int(p) < 1 for p in patch_size):
        raise ValueError("patch_size: three positive sizes (D, H, W)")
    patch = [int(p) for p in patch_size]
    # the user's patch as the "median" of a budget that holds it: auto_config keeps it, rounded to its poolings
    budget = max(max_dim, math.ceil(math.prod(patch) ** (1 / 3)))
    own = auto_config(patch, max_dim=budget, max_pool=max_pool).as_dict()
    return {**plan, "patch_size": own["patch_size"], "num_pools": own["num_pools"],
            "aug_patch_size": own["aug_patch_size"], "requested_patch_size": patch}

"""Accepting the corrector's suggestions: a region to remove from an object, or to add to it.

An accepted suggestion is the user's edit: never overwritten by a later model result, and one undo
step. Removing only clears the object's own pixels; adding never takes pixels the user painted.
"""

from __future__ import annotations

import numpy as np

from ..errors import InputError
from .results import ObjectResult
from .session import AnnotationSession

KINDS = ("remove", "add")


def suggestion_at(session: AnnotationSession, slice_index: int | None, row: int, col: int
                  ) -> tuple[ObjectResult, str, int] | None:
    """The suggestion under a pixel: (result, 'remove' | 'add', region id), or None."""
    for (z, _), result in session.results.items():
        if z != slice_index:
            continue
        r0, r1, c0, c1 = result.roi
        if not (r0 <= row < r1 and c0 <= col < c1):
            continue
        for kind in KINDS:
            regions = getattr(result, kind)
            if regions is not None and regions[row - r0, col - c0]:
                return result, kind, int(regions[row - r0, col - c0])
    return None


def _region_pixels(session: AnnotationSession, result: ObjectResult, kind: str, region_id: int | None) -> np.ndarray:
    regions = getattr(result, kind)
    full = np.zeros(session.slice_shape, bool)
    if regions is not None:
        full[result.region] = regions > 0 if region_id is None else regions == region_id
    return full


def _forget(result: ObjectResult, kind: str, region_id: int | None) -> None:
    regions = getattr(result, kind)
    if regions is not None:
        regions[(regions > 0) if region_id is None else (regions == region_id)] = 0


def accept(session: AnnotationSession, result: ObjectResult, kind: str, region_id: int | None = None) -> int:
    """Apply one suggestion region (or all of `kind` with `region_id` None). Returns pixels changed."""
    if kind not in KINDS:
        raise InputError(f"a suggestion is 'remove' or 'add', not {kind!r}")
    labels = session.slice_labels(result.slice_index)
    pixels = _region_pixels(session, result, kind, region_id)
    key = (result.slice_index, result.label)
    if kind == "remove":
        changed = session.apply_edit(result.slice_index, pixels & (labels == result.label), 0, key)
    else:
        free = ~session.slice_edited(result.slice_index)
        changed = session.apply_edit(result.slice_index, pixels & free, result.label, key)
    regions = getattr(result, kind)
    if changed and regions is not None:  # undo brings the suggestion back on the overlay too
        shown = regions.copy()
        session.undo_stack[-1].restore = lambda: np.copyto(regions, np.where(regions > 0, regions, shown))
    _forget(result, kind, region_id)
    return changed


def accept_all(session: AnnotationSession, slice_index: int | None) -> int:
    """Every suggestion on a slice, as one undo step."""
    changed = 0
    session.begin_group()
    try:
        for (z, _), result in list(session.results.items()):
            if z == slice_index:
                changed += sum(accept(session, result, kind) for kind in KINDS)
    finally:
        session.end_group()
    return changed


def dismiss(session: AnnotationSession, slice_index: int | None) -> int:
    """Drop every suggestion on a slice; returns how many regions were dropped."""
    dropped = 0
    for (z, _), result in session.results.items():
        if z == slice_index:
            for kind in KINDS:
                regions = getattr(result, kind)
                if regions is not None:
                    dropped += len(np.unique(regions[regions > 0]))
                    regions[...] = 0
    return dropped


def suggestion_map(session: AnnotationSession, slice_index: int | None) -> np.ndarray:
    """What the suggestions layer shows on a slice: 1 where a removal is suggested, 2 for an addition."""
    shown = np.zeros(session.slice_shape, np.uint8)
    for (z, _), result in session.results.items():
        if z == slice_index:
            for value, kind in ((1, "remove"), (2, "add")):
                regions = getattr(result, kind)
                if regions is not None:
                    shown[result.region][regions > 0] = value
    return shown

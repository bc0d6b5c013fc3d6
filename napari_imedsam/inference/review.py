"""The review queue: which unaccepted slice's labels are most likely wrong.

Each object on each slice gets a score from four signs that a mask is wrong, each scaled so that
1.0 means "clearly suspicious":
- the model's own doubt: mean predictive variance in the box / 0.25 (its maximum);
- an empty mask: the model was asked but wrote nothing, or the object is missing on a slice
  between two slices that have it (a gap): 2.0, the strongest sign;
- a jump in area against the object's labelled neighbours within 3 slices (collapsed or exploded):
  |log2(area / their median)|;
- a mask whose intensity does not match the object's (the median of the normalised slice inside the
  mask against the object's pooled median, in units of its spread; accepted slices are the
  reference once there are any) — a confident mask on a slice where the object is absent scores here.
A slice's score is its worst object's sum of these.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .session import AnnotationSession
from .windows import normalize_intensity

INTENSITY_SPREADS = 2.5  # shift (in spreads) that counts as clearly suspicious
EMPTY = 2.0  # a missing mask between slices that have the object is very likely a miss


@dataclass
class ReviewScore:
    total: float = 0.0
    reasons: list[str] = field(default_factory=list)


def _grey(session: AnnotationSession, z: int | None) -> np.ndarray:
    return normalize_intensity(session.slice_image(z), session.window).mean(axis=-1)


def _object_slices(session: AnnotationSession, label: int) -> dict[int | None, int]:
    """Slice -> area of `label` for every slice where it has pixels."""
    if not session.is_volume:
        area = int((session.labels == label).sum())
        return {None: area} if area else {}
    areas = (session.labels == label).sum(axis=(1, 2))
    return {int(z): int(a) for z, a in enumerate(areas) if a}


def _neighbour_area(areas: dict[int | None, int], z: int, reach: int = 3) -> float | None:
    near = [areas[n] for d in range(1, reach + 1) for n in (z - d, z + d) if n in areas]
    return float(np.median(near)) if near else None


def review_scores(session: AnnotationSession) -> dict[int | None, ReviewScore]:
    """Score every unaccepted slice that has labels, results, or a gap in an object."""
    labels_present = {int(v) for v in np.unique(session.labels) if v}
    objects = labels_present | {label for (_, label) in session.results}
    scores: dict[int | None, ReviewScore] = {}
    greys: dict[int | None, np.ndarray] = {}

    def grey(z):
        if z not in greys:
            greys[z] = _grey(session, z)
        return greys[z]

    for label in sorted(objects):
        areas = _object_slices(session, label)
        candidates = set(areas) | {z for (z, lab) in session.results if lab == label}
        if session.is_volume and areas:
            zs = sorted(areas)
            candidates |= {z for z in range(zs[0], zs[-1] + 1)}
        reference = [z for z in areas if z in session.accepted] or list(areas)
        pooled = np.concatenate([grey(z)[session.slice_labels(z) == label] for z in reference]) if reference else None
        if pooled is not None and pooled.size:
            low, median, high = np.percentile(pooled, [25, 50, 75])
            spread = max(high - low, 0.02)
        for z in candidates:
            if z in session.accepted:
                continue
            score, reasons = 0.0, []
            result = session.results.get((z, label))
            if result is not None:
                doubt = result.mean_uncertainty / 0.25
                score += doubt
                reasons.append(f"object {label}: model doubt {doubt:.2f}")
            area = areas.get(z, 0)
            if area == 0:
                score += EMPTY
                reasons.append(f"object {label}: empty mask" if result is not None else f"object {label}: gap")
            else:
                if session.is_volume:
                    near = _neighbour_area(areas, z)
                    if near:
                        jump = abs(np.log2(area / near))
                        score += jump
                        if jump > 0.5:
                            reasons.append(f"object {label}: area {area} px vs {near:.0f} on neighbours")
                if pooled is not None and pooled.size:
                    shift = abs(float(np.median(grey(z)[session.slice_labels(z) == label])) - median) / spread
                    score += shift / INTENSITY_SPREADS
                    if shift > 1.0:
                        reasons.append(f"object {label}: intensity {shift:.1f} spreads from the object's")
            entry = scores.setdefault(z, ReviewScore())
            if score > entry.total:
                entry.total, entry.reasons = score, reasons
    return scores

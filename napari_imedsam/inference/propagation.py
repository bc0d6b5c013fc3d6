"""Propagation of one object through a volume, slice by slice, stopping where the object ends.

A box-prompted model answers something even where the object has ended (it tends to fill the box
with whatever lies there), so each new slice's mask is checked against the object as it was seen
on the start slice before it is kept:
- the prompt is the previous mask's tight box plus a few pixels, re-prompted once with the new
  mask's own tight box when that differs (a loose box makes a box-trained model over-segment);
- only the connected parts of the mask that touch the previous slice's mask are kept;
- the object counts as gone when the mask is tiny, overlaps the previous mask too little, grows
  or shrinks too fast, when its intensity no longer matches the object's (the median of the
  normalised slice inside the mask against the start slice's, in units of the start's spread; or
  fewer mask pixels with intensities more typical of the object than of its surroundings on the
  start slice), or when the model is much less sure than it was on the start slice.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ..errors import InputError
from .boxes import box_of_mask
from .results import ObjectResult
from .session import AnnotationSession
from .windows import normalize_intensity


@dataclass(frozen=True)
class PropagationRules:
    """When a propagated slice still shows the object. Defaults measured on the 3D phantom and BraTS."""

    box_pad: float = 2.0  # pixels added around the previous mask's tight box
    min_area: int = 10
    min_overlap: float = 0.5  # |new ∩ previous| / min(|new|, |previous|)
    max_growth: float = 1.6  # area(new) / area(previous)
    min_shrink: float = 0.25
    max_intensity_shift: float = 2.5  # |median(new) - median(start)| / spread(start)
    min_object_like: float = 0.5  # object-like fraction of the mask, relative to the start slice's
    max_uncertainty_ratio: float = 5.0
    # Every propagated slice averaged over its mirror images (`mirror`): ~4x the time of a background
    # job, and propagation compounds each slice's errors (BraTS patient 6: volume Dice 0.828 -> 0.879).
    mirror: bool = True


BINS = 32


@dataclass
class ObjectProfile:
    """How the object looks on the start slice: median normalised intensity and its spread
    (interquartile range), which intensities are more typical of the object than of its
    surroundings (a ring around the mask), and the model's uncertainty there."""

    median: float
    spread: float
    object_like: np.ndarray  # (BINS,) bool: histogram bin where the object is more likely than its ring
    start_fraction: float  # fraction of the start mask whose intensity is object-like
    uncertainty: float

    @classmethod
    def of(cls, grey: np.ndarray, mask: np.ndarray, uncertainty: float) -> ObjectProfile:
        values = grey[mask]
        p25, p50, p75 = np.percentile(values, [25, 50, 75])
        size = max(1, int(np.sqrt(mask.sum())))
        ring = ndimage.binary_dilation(mask, iterations=max(3, size // 6)) & ~mask
        inside = np.histogram(values, BINS, (0.0, 1.0))[0] + 0.5
        around = np.histogram(grey[ring], BINS, (0.0, 1.0))[0] + 0.5
        object_like = inside / inside.sum() >= around / around.sum()
        profile = cls(float(p50), float(max(p75 - p25, 0.02)), object_like, 1.0, max(uncertainty, 1e-6))
        profile.start_fraction = max(profile.fraction_object_like(values), 1e-3)
        return profile

    def fraction_object_like(self, values: np.ndarray) -> float:
        bins = np.clip((values * BINS).astype(int), 0, BINS - 1)
        return float(self.object_like[bins].mean()) if values.size else 0.0


def slice_grey(session: AnnotationSession, z: int) -> np.ndarray:
    """The slice normalised as the model sees it, as one grey channel."""
    return normalize_intensity(session.slice_image(z), session.window).mean(axis=-1)


def _connected_to(mask: np.ndarray, previous: np.ndarray) -> np.ndarray:
    """The connected components of `mask` that touch `previous` (8-connectivity)."""
    components, count = ndimage.label(mask, structure=np.ones((3, 3)))
    if count == 0:
        return mask
    keep = np.unique(components[previous & mask])
    return np.isin(components, keep[keep > 0])


def _padded_box(mask: np.ndarray, pad: float) -> np.ndarray:
    height, width = mask.shape
    x0, y0, x1, y1 = box_of_mask(mask)
    return np.array([max(0.0, x0 - pad), max(0.0, y0 - pad), min(width - 1.0, x1 + pad), min(height - 1.0, y1 + pad)])


def _restricted(result: ObjectResult, keep_full: np.ndarray) -> ObjectResult:
    """`result` with its refined probability zeroed outside `keep_full` (slice-size mask)."""
    kept = keep_full[result.region]
    refined = np.where(kept, result.refined_prob, 0.0).astype(np.float32)
    return ObjectResult(result.slice_index, result.label, result.box_xyxy, result.roi, result.coarse_prob,
                        result.uncertainty, refined, result.mean_uncertainty)


def why_object_ended(mask: np.ndarray, previous: np.ndarray, grey: np.ndarray, uncertainty: float,
                     profile: ObjectProfile, rules: PropagationRules) -> str | None:
    """None when `mask` still shows the object, else the reason it counts as ended."""
    area, previous_area = int(mask.sum()), int(previous.sum())
    if area < rules.min_area:
        return f"mask under {rules.min_area} px"
    overlap = (mask & previous).sum() / max(1, min(area, previous_area))
    if overlap < rules.min_overlap:
        return f"overlap with the previous slice {overlap:.2f} < {rules.min_overlap}"
    if area > rules.max_growth * previous_area:
        return f"area grew {area / previous_area:.1f}x"
    if area < rules.min_shrink * previous_area:
        return f"area shrank to {area / previous_area:.2f}x"
    values = grey[mask]
    shift = abs(float(np.median(values)) - profile.median) / profile.spread
    if shift > rules.max_intensity_shift:
        return f"intensity differs from the object's ({shift:.1f} spreads)"
    likeness = profile.fraction_object_like(values) / profile.start_fraction
    if likeness < rules.min_object_like:
        return f"the mask looks like the object's surroundings (object-like {likeness:.0%} of the start's)"
    if uncertainty > rules.max_uncertainty_ratio * profile.uncertainty:
        return f"uncertainty {uncertainty / profile.uncertainty:.1f}x the start slice's"
    return None


def propagate(session: AnnotationSession, slice_index: int, label: int, direction: int,
              rules: PropagationRules = PropagationRules()) -> Iterator[ObjectResult]:
    """Segment the object slice after slice in `direction` (+1 or -1) from `slice_index`'s labels.

    The start is the object's current labels on that slice (the model result with the user's
    corrections), plus its model mask under other objects. Yields results without applying them: the
    caller applies them (on the GUI thread in the widget). The generator's return value
    (StopIteration.value) is the reason it stopped.
    """
    if not session.is_volume:
        raise InputError("propagation needs a 3D volume")
    if direction not in (1, -1):
        raise InputError("direction must be +1 or -1")
    z = session.check_slice(slice_index)
    labels = session.slice_labels(z)
    previous = labels == label
    if not previous.any():
        raise InputError(f"object {label} has no pixels on slice {slice_index}: draw a box first")
    start = session.results.get((z, label))
    if start is not None:  # the object goes on under objects that hold some of its pixels (a lesion inside it):
        # its extent there, not only what it owns, is what the next slice's mask is compared with
        previous |= start.full("refined_mask", session.slice_shape) & (labels > 0)
    start_uncertainty = start.mean_uncertainty if start is not None else 0.0
    if start is None:  # painted only: ask the model once to know how sure it is about this object
        start_uncertainty = session.predict(z, _padded_box(previous, rules.box_pad), label,
                                            mirror=rules.mirror).mean_uncertainty
    profile = ObjectProfile.of(slice_grey(session, z), previous, start_uncertainty)
    z += direction
    while 0 <= z < session.n_slices:
        result = session.predict(z, _padded_box(previous, rules.box_pad), label, mirror=rules.mirror)
        mask = result.full("refined_mask", session.slice_shape)
        if mask.any():
            tight = box_of_mask(mask)
            if np.abs(tight - result.box_xyxy).max() > rules.box_pad + 1:
                result = session.predict(z, _padded_box(mask, 1.0), label, mirror=rules.mirror)
                mask = result.full("refined_mask", session.slice_shape)
        mask = _connected_to(mask, previous)
        reason = why_object_ended(mask, previous, slice_grey(session, z), result.mean_uncertainty, profile, rules)
        if reason is not None:
            return f"slice {z}: {reason}"
        yield _restricted(result, mask)
        previous = mask
        z += direction
    return "reached the last slice" if direction > 0 else "reached the first slice"


def propagate_both(session: AnnotationSession, slice_index: int, label: int, reasons: list[str] | None = None,
                   rules: PropagationRules = PropagationRules()) -> Iterator[ObjectResult]:
    """`propagate` forward, then backward, from the same start; each direction's stop reason is
    appended to `reasons` as it ends (so a caller that stops early keeps the reasons so far)."""
    for direction in (1, -1):
        reason = yield from propagate(session, slice_index, label, direction, rules)
        if reasons is not None:
            reasons.append(reason)

"""What a model write produces and keeps: an object's result on a slice, what writing it did to the
labels, and the patch that undoes it (records shared by the session, propagation and suggestions)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .predictor import Prediction


@dataclass
class ObjectResult:
    """The model's result for one object (label value) on one slice, kept only inside its region."""

    slice_index: int | None
    label: int
    box_xyxy: np.ndarray
    roi: tuple[int, int, int, int]  # (row0, row1, col0, col1) of the maps below in the slice
    coarse_prob: np.ndarray
    uncertainty: np.ndarray
    refined_prob: np.ndarray
    mean_uncertainty: float
    # The corrector's suggestions inside `roi` (region ids, 0 = none), when the model has a corrector.
    remove: np.ndarray | None = None
    add: np.ndarray | None = None
    clicks: tuple[int, ...] = ()  # ids of the click prompts this result used (the widget's bookkeeping)
    claimed_at: tuple[tuple[int, int], ...] = ()  # (row, col) of its positive clicks: they win contested patches

    @classmethod
    def from_prediction(cls, slice_index: int | None, label: int, prediction: Prediction,
                        suggestions=None) -> ObjectResult:
        r0, r1, c0, c1 = prediction.roi
        crop = (slice(r0, r1), slice(c0, c1))
        remove = add = None
        if suggestions is not None:
            remove, add = suggestions.remove[crop].copy(), suggestions.add[crop].copy()
        return cls(slice_index, int(label), np.asarray(prediction.box_xyxy, float), (r0, r1, c0, c1),
                   prediction.coarse_prob[crop].copy(), prediction.uncertainty[crop].copy(),
                   prediction.refined_prob[crop].copy(), prediction.mean_uncertainty_in_box, remove, add)

    @property
    def region(self) -> tuple[slice, slice]:
        r0, r1, c0, c1 = self.roi
        return slice(r0, r1), slice(c0, c1)

    @property
    def refined_mask(self) -> np.ndarray:
        """Refined mask inside `roi` (bool, cropped)."""
        return self.refined_prob > 0.5

    def full(self, name: str, shape: tuple[int, int]) -> np.ndarray:
        """One of the maps ('coarse_prob', 'uncertainty', 'refined_prob', 'refined_mask') at slice size."""
        values = getattr(self, name)
        out = np.zeros(shape, values.dtype)
        out[self.region] = values
        return out


@dataclass
class WriteReport:
    """What a model write actually did to the labels (the status line reports this, not the mask size)."""

    label: int
    slice_index: int | None
    written: int  # pixels now holding `label` from this result
    predicted: int  # pixels the refined mask covers
    protected: int = 0  # predicted pixels the user painted or erased: left as they are
    kept_by: dict[int, int] = field(default_factory=dict)  # label -> predicted pixels it kept (more confident)
    taken_from: dict[int, int] = field(default_factory=dict)  # label -> pixels taken over (less confident)
    changed: int | None = None  # a new result for an object that had one (a moved box, a click): pixels changed

    def summary(self) -> str:
        where = "" if self.slice_index is None else f" on slice {self.slice_index}"
        parts = [f"Object {self.label}{where}: {self.written} px written"]
        if self.changed is not None:
            parts[0] += f" ({self.changed} px changed)" if self.changed else " (no pixel changed)"
        if self.protected:
            parts.append(f"{self.protected} px left as you painted them")
        parts += [f"{n} px kept by object {other} (more confident there)" for other, n in sorted(self.kept_by.items())]
        parts += [f"{n} px taken from object {other}" for other, n in sorted(self.taken_from.items())]
        return "; ".join(parts) + "."


@dataclass
class LabelPatch:
    """Labels of a region before a model write, and the results it replaced, to undo it."""

    slice_index: int | None
    region: tuple[slice, slice]
    before: np.ndarray
    key: tuple[int | None, int]
    previous_result: ObjectResult | None
    group: int  # patches of one action (a propagation run) share a group and are undone together
    changed: np.ndarray | None = None  # a user-side edit (an accepted suggestion): the pixels it set
    edited_before: np.ndarray | None = None  # and the user-edit flags before it, in `region`
    undone: ObjectResult | None = None  # set by `undo`: the result that was taken back
    restore: Callable[[], None] | None = None  # what else undo puts back (an accepted suggestion's overlay)

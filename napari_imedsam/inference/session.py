"""AnnotationSession: boxes -> labels on a 2D image or a volume, slice by slice. No Qt, no napari.

It owns the rules of interactive annotation, so the widget only wires layers to it:
- a box result is written under its object's label value, and never over pixels the user painted
  or erased, nor over another object;
- re-prompting an object replaces what the model wrote for it before, not what the user painted;
- every write can be undone; slices can be accepted (corrected, ready for export/fine-tuning);
- propagation through a volume and the "most uncertain slice" review queue.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from ..io.export import ExportSlice
from .predictor import Prediction, Predictor
from .preprocess import InputError, IntensityWindow, box_of_mask


@dataclass
class ObjectResult:
    """The model's latest result for one object (label value) on one slice."""

    slice_index: int | None
    label: int
    box_xyxy: np.ndarray
    prediction: Prediction

    @property
    def mean_uncertainty(self) -> float:
        return self.prediction.mean_uncertainty_in_box


@dataclass
class LabelPatch:
    """Labels of a region before a model write, to undo it."""

    slice_index: int | None
    region: tuple[slice, slice]
    before: np.ndarray
    key: tuple[int | None, int]
    previous_result: ObjectResult | None
    previous_written: np.ndarray | None


class AnnotationSession:
    """Interactive segmentation state for one image (2D, RGB, or a (Z, H, W) volume) and its labels.

    `labels` and `user_edited` are modified in place (the widget passes its layer's arrays, or
    views of them moved so that the slicing axis comes first).
    """

    def __init__(self, predictor: Predictor, image: np.ndarray, labels: np.ndarray, *, rgb: bool = False,
                 window: IntensityWindow | None = None, user_edited: np.ndarray | None = None) -> None:
        spatial = image.shape[:-1] if rgb else image.shape
        if len(spatial) not in (2, 3):
            raise InputError(f"expected a 2D image or a 3D volume, got an image of shape {image.shape}")
        if labels.shape != spatial:
            raise InputError(f"labels of shape {labels.shape} do not match the image's {spatial}")
        self.predictor = predictor
        self.image = image
        self.labels = labels
        self.rgb = rgb
        self.window = window
        self.user_edited = user_edited if user_edited is not None else np.zeros(labels.shape, bool)
        self.results: dict[tuple[int | None, int], ObjectResult] = {}
        self._written: dict[tuple[int | None, int], np.ndarray] = {}  # model-written pixels per object
        self.undo_stack: list[LabelPatch] = []
        self.accepted: set[int | None] = set()
        self.exported: set[int | None] = set()

    # ---- slices -----------------------------------------------------------------------------
    @property
    def is_volume(self) -> bool:
        return self.labels.ndim == 3

    @property
    def n_slices(self) -> int:
        return self.labels.shape[0] if self.is_volume else 1

    def _check_slice(self, slice_index: int | None) -> int | None:
        if not self.is_volume:
            return None
        if slice_index is None or not 0 <= slice_index < self.n_slices:
            raise InputError(f"slice {slice_index} is outside the volume (0..{self.n_slices - 1})")
        return int(slice_index)

    def slice_image(self, slice_index: int | None) -> np.ndarray:
        z = self._check_slice(slice_index)
        return self.image if z is None else self.image[z]

    def slice_labels(self, slice_index: int | None) -> np.ndarray:
        z = self._check_slice(slice_index)
        return self.labels if z is None else self.labels[z]

    def _slice_of(self, array: np.ndarray, slice_index: int | None) -> np.ndarray:
        return array if slice_index is None else array[slice_index]

    def embed(self, slice_index: int | None) -> None:
        """Compute (or find cached) the embedding of a slice; for background pre-computation."""
        self.predictor.embed(self.slice_image(slice_index), self.window, slice_index)

    # ---- one box --------------------------------------------------------------------------------
    def predict(self, slice_index: int | None, box_xyxy, label: int) -> ObjectResult:
        """Run the model for a box; does not touch the labels (safe in a worker thread)."""
        if label < 1:
            raise InputError(f"label value must be 1 or more, got {label}")
        z = self._check_slice(slice_index)
        prediction = self.predictor.predict(self.slice_image(z), box_xyxy, window=self.window, slice_index=z)
        return ObjectResult(z, int(label), prediction.box_xyxy, prediction)

    def apply(self, result: ObjectResult) -> LabelPatch:
        """Write a result into the labels under its label value; returns the undo patch."""
        key = (result.slice_index, result.label)
        labels = self._slice_of(self.labels, result.slice_index)
        edited = self._slice_of(self.user_edited, result.slice_index)
        previous = self._written.get(key)
        new_mask = result.prediction.refined_mask
        region_mask = new_mask if previous is None else (new_mask | previous)
        rows, cols = np.nonzero(region_mask)
        if rows.size == 0:
            r0, r1, c0, c1 = result.prediction.roi
            region = (slice(r0, r0), slice(c0, c0))
        else:
            region = (slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1))
        patch = LabelPatch(result.slice_index, region, labels[region].copy(), key, self.results.get(key),
                           None if previous is None else previous.copy())
        free = ~edited
        if previous is not None:  # retract what the model wrote for this object before
            stale = previous & ~new_mask & free & (labels == result.label)
            labels[stale] = 0
        labels[new_mask & free & (labels == 0)] = result.label
        self._written[key] = new_mask & free & (labels == result.label)
        self.results[key] = result
        self.undo_stack.append(patch)
        return patch

    def segment(self, slice_index: int | None, box_xyxy, label: int) -> ObjectResult:
        result = self.predict(slice_index, box_xyxy, label)
        self.apply(result)
        return result

    def undo(self) -> int | None:
        """Restore the labels as they were before the last model write. Returns its slice (or None)."""
        if not self.undo_stack:
            raise InputError("nothing to undo")
        patch = self.undo_stack.pop()
        labels = self._slice_of(self.labels, patch.slice_index)
        edited = self._slice_of(self.user_edited, patch.slice_index)[patch.region]
        target = labels[patch.region]
        target[~edited] = patch.before[~edited]  # user strokes made since stay
        if patch.previous_result is None:
            self.results.pop(patch.key, None)
            self._written.pop(patch.key, None)
        else:
            self.results[patch.key] = patch.previous_result
            self._written[patch.key] = patch.previous_written
        return patch.slice_index

    def record_user_edit(self, index) -> None:
        """Mark pixels the user painted or erased (numpy index into the labels array)."""
        self.user_edited[index] = True

    # ---- review ------------------------------------------------------------------------------------
    def accept(self, slice_index: int | None) -> None:
        """Mark a slice's objects as corrected: export and fine-tuning use accepted slices."""
        z = self._check_slice(slice_index)
        if not self._slice_of(self.labels, z).any():
            raise InputError("this slice has no labels to accept")
        self.accepted.add(z)

    def pending_exports(self, source: str = "", axis: int | None = None,
                        spacing: tuple[float, float] | None = None) -> list[ExportSlice]:
        """Accepted slices not exported yet, with the box of each object (the user's, or a tight one
        for objects that were only painted). Call `mark_exported` once they are written."""
        items = []
        model = self.predictor.model
        for z in sorted(self.accepted - self.exported, key=lambda v: -1 if v is None else v):
            labels = self.slice_labels(z).copy()
            boxes = {}
            for value in np.unique(labels):
                if value == 0:
                    continue
                result = self.results.get((z, int(value)))
                boxes[int(value)] = (result.box_xyxy if result is not None
                                     else box_of_mask(labels == value)).tolist()
            items.append(ExportSlice(np.asarray(self.slice_image(z)).copy(), labels, boxes, source=source,
                                     slice_index=z, axis=axis, model=model.model_id,
                                     adapter_version=model.adapter_version, spacing=spacing))
        return items

    def mark_exported(self, items: list[ExportSlice]) -> None:
        self.exported.update(item.slice_index for item in items)

    def next_uncertain_slice(self, current: int | None = None) -> int | None:
        """The not-yet-accepted slice whose results have the highest mean uncertainty in their box."""
        scores: dict[int | None, float] = {}
        for (z, _), result in self.results.items():
            if z not in self.accepted:
                scores[z] = max(scores.get(z, 0.0), result.mean_uncertainty)
        if not scores:
            return None
        return max(scores, key=lambda z: (scores[z], -abs((z or 0) - (current or 0))))

    # ---- volumes -----------------------------------------------------------------------------------
    def propagate(self, slice_index: int, label: int, direction: int, *, min_area: int = 10,
                  stop_fraction: float = 0.05, grow: float = 0.1, min_overlap: float = 0.4,
                  max_uncertainty_ratio: float = 3.0) -> Iterator[ObjectResult]:
        """Segment the object slice after slice in `direction` (+1 or -1), from `slice_index`'s result.

        Each slice's box is the previous slice's mask box, grown by `grow` of its size. A box-prompted
        model answers something even where the object has ended (it tends to fill the box), so the
        object counts as gone when the mask is tiny (under `min_area` or `stop_fraction` of the start),
        when it overlaps the previous slice's mask by IoU < `min_overlap` (real anatomy changes
        little between adjacent slices), or when the mean uncertainty in the box exceeds
        `max_uncertainty_ratio` times the start slice's. Yields results without applying them: the
        caller applies them (on the GUI thread in the widget).
        """
        if not self.is_volume:
            raise InputError("propagation needs a 3D volume")
        if direction not in (1, -1):
            raise InputError("direction must be +1 or -1")
        start = self.results.get((self._check_slice(slice_index), label))
        if start is None:
            raise InputError(f"no result for object {label} on slice {slice_index} to propagate from")
        mask = start.prediction.refined_mask
        start_area = int(mask.sum())
        start_uncertainty = max(start.mean_uncertainty, 1e-6)
        z = slice_index + direction
        while 0 <= z < self.n_slices and mask.any():
            rows, cols = np.nonzero(mask)
            height, width = mask.shape
            pad_y = max(1.0, grow * (rows.max() - rows.min() + 1))
            pad_x = max(1.0, grow * (cols.max() - cols.min() + 1))
            box = np.array([max(0.0, cols.min() - pad_x), max(0.0, rows.min() - pad_y),
                            min(width - 1.0, cols.max() + pad_x), min(height - 1.0, rows.max() + pad_y)])
            result = self.predict(z, box, label)
            new_mask = result.prediction.refined_mask
            area = int(new_mask.sum())
            overlap = (new_mask & mask).sum() / max(1, (new_mask | mask).sum())
            if (area < max(min_area, stop_fraction * start_area) or overlap < min_overlap
                    or result.mean_uncertainty > max_uncertainty_ratio * start_uncertainty):
                return
            mask = new_mask
            yield result
            z += direction

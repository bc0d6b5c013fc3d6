"""AnnotationSession: boxes -> labels on a 2D image or a volume, slice by slice. No Qt, no napari.

It owns the rules of interactive annotation, so the widget only wires layers to it:
- every box is one object with its own label value;
- pixels the user painted or erased are never overwritten by the model;
- where two objects' *model* outputs claim a pixel, the more confident prediction there wins
  (refined probability; a tie goes to the newer result), except that an object whose box lies inside
  the other's wins (a lesion inside its organ), and on a patch the user clicked with a positive click
  (that patch goes to the clicked object); a pixel an object gives up goes back to the best other
  claimant;
- re-prompting an object replaces what the model wrote for it before, not what the user painted;
- every write can be undone; the session owns the user-edit mask and the accepted slices.
Propagation lives in `propagation.py`, the review queue in `review.py`.
"""

from __future__ import annotations

import numpy as np

from ..errors import InputError
from .boxes import box_of_mask, nested_in
from .clicks import click_pixel, clicked_patches
from .predictor import Predictor
from .results import LabelPatch, ObjectResult, WriteReport
from .windows import IntensityWindow, volume_window


class AnnotationSession:
    """Interactive segmentation state for one image (2D, RGB, or a volume) and its labels.

    `labels` (and `user_edited`) are modified in place: the widget passes its layer's array.
    For a volume, `axis` is the data axis slices are taken along; the session works on views with
    that axis first.
    """

    def __init__(self, predictor: Predictor | None, image: np.ndarray, labels: np.ndarray, *, rgb: bool = False,
                 window: IntensityWindow | None = None, user_edited: np.ndarray | None = None,
                 axis: int | None = None) -> None:
        spatial = image.shape[:-1] if rgb else image.shape
        if len(spatial) not in (2, 3):
            raise InputError(f"expected a 2D image or a 3D volume, got an image of shape {image.shape}")
        if labels.shape != spatial:
            raise InputError(f"labels of shape {labels.shape} do not match the image's {spatial}")
        if user_edited is not None and user_edited.shape != spatial:
            raise InputError(f"user-edit mask of shape {user_edited.shape} does not match the image's {spatial}")
        self.axis = (0 if axis is None else int(axis)) if len(spatial) == 3 else None
        self.predictor = predictor
        self.rgb = rgb
        self.labels_base = labels
        self.user_edited_base = user_edited if user_edited is not None else np.zeros(spatial, bool)
        self.image = image if self.axis is None else np.moveaxis(image, self.axis, 0)
        self.labels = labels if self.axis is None else np.moveaxis(labels, self.axis, 0)
        self.user_edited = (self.user_edited_base if self.axis is None
                            else np.moveaxis(self.user_edited_base, self.axis, 0))
        self._requested_window: object = ()
        self.set_window(window)
        self.corrector = None  # a DualFalseCorrector: results then carry remove/add suggestions
        self.results: dict[tuple[int | None, int], ObjectResult] = {}
        self.undo_stack: list[LabelPatch] = []
        self._group: int | None = None
        self._groups = 0
        self.accepted: set[int | None] = set()
        self.exported: set[int | None] = set()

    def set_window(self, window: IntensityWindow | None) -> None:
        """The intensity window; percentile/min-max windows of a volume become one fixed window."""
        if window == self._requested_window:
            return
        self._requested_window = window
        self.window = volume_window(self.image, window, self.rgb) if self.labels.ndim == 3 else window

    def begin_group(self) -> None:
        """Writes until `end_group` are one undo step (a propagation run)."""
        self._groups += 1
        self._group = self._groups

    def end_group(self) -> None:
        self._group = None

    # ---- slices -----------------------------------------------------------------------------
    @property
    def is_volume(self) -> bool:
        return self.labels.ndim == 3

    @property
    def n_slices(self) -> int:
        return self.labels.shape[0] if self.is_volume else 1

    @property
    def slice_shape(self) -> tuple[int, int]:
        return tuple(self.labels.shape[-2:])

    def check_slice(self, slice_index: int | None) -> int | None:
        if not self.is_volume:
            return None
        if slice_index is None or not 0 <= slice_index < self.n_slices:
            raise InputError(f"slice {slice_index} is outside the volume (0..{self.n_slices - 1})")
        return int(slice_index)

    def slice_image(self, slice_index: int | None) -> np.ndarray:
        z = self.check_slice(slice_index)
        return self.image if z is None else self.image[z]

    def slice_labels(self, slice_index: int | None) -> np.ndarray:
        z = self.check_slice(slice_index)
        return self.labels if z is None else self.labels[z]

    def slice_edited(self, slice_index: int | None) -> np.ndarray:
        z = self.check_slice(slice_index)
        return self.user_edited if z is None else self.user_edited[z]

    def embed(self, slice_index: int | None) -> None:
        """Compute (or find cached) the embedding of a slice; for background pre-computation."""
        self._require_predictor().embed(self.slice_image(slice_index), self.window, slice_index)

    def _require_predictor(self) -> Predictor:
        if self.predictor is None:
            raise InputError("no model loaded: choose one and press 'Load model'")
        return self.predictor

    # ---- one box --------------------------------------------------------------------------------
    def predict(self, slice_index: int | None, box_xyxy, label: int, points: np.ndarray | None = None,
                mirror: bool | None = None) -> ObjectResult:
        """Run the model for a box (and clicks: (N, 3) rows of x, y, positive); does not touch the labels
        (safe in a worker thread). `mirror`: see `Predictor.predict`."""
        if label < 1:
            raise InputError(f"label value must be 1 or more, got {label}")
        z = self.check_slice(slice_index)
        image = self.slice_image(z)
        prediction = self._require_predictor().predict(image, box_xyxy, window=self.window, slice_index=z,
                                                       points=points, mirror=mirror)
        suggestions = None
        if self.corrector is not None and (points is None or len(points) == 0):
            # a box's result only: after clicks the corrector (trained on box results) neither helped nor
            # hurt on the training images' held-back slices, so its proposals there would only be noise
            from .correction import suggest

            suggestions = suggest(self.corrector, prediction, image, self.window)
        result = ObjectResult.from_prediction(z, label, prediction, suggestions)
        if points is not None and len(points):
            result.claimed_at = tuple(click_pixel(x, y, prediction.refined_prob.shape)
                                      for x, y, positive in np.asarray(points, float).reshape(-1, 3) if positive > 0)
        return result

    def _claim(self, slice_index: int | None, label: int, region: tuple[slice, slice]) -> np.ndarray:
        """Refined probability of `label`'s current result over `region` (0 where it says nothing)."""
        out = np.zeros((region[0].stop - region[0].start, region[1].stop - region[1].start), np.float32)
        result = self.results.get((slice_index, label))
        if result is None:
            return out
        r0, r1, c0, c1 = result.roi
        rr0, rr1 = max(r0, region[0].start), min(r1, region[0].stop)
        cc0, cc1 = max(c0, region[1].start), min(c1, region[1].stop)
        if rr0 < rr1 and cc0 < cc1:
            out[rr0 - region[0].start:rr1 - region[0].start, cc0 - region[1].start:cc1 - region[1].start] = \
                result.refined_prob[rr0 - r0:rr1 - r0, cc0 - c0:cc1 - c0]
        return out

    def apply(self, result: ObjectResult) -> WriteReport:
        """Write a result into the labels under its label value (rules in the module docstring)."""
        z, label = result.slice_index, result.label
        key = (z, label)
        labels, edited = self.slice_labels(z), self.slice_edited(z)
        # The region touched: the new result's roi and wherever the object's old model pixels are.
        old = (labels == label) & ~edited
        rows, cols = np.nonzero(old)
        r0, r1, c0, c1 = result.roi
        if rows.size:
            r0, r1 = min(r0, int(rows.min())), max(r1, int(rows.max()) + 1)
            c0, c1 = min(c0, int(cols.min())), max(c1, int(cols.max()) + 1)
        region = (slice(r0, r1), slice(c0, c1))
        if self._group is None:
            self._groups += 1
        group = self._group if self._group is not None else self._groups
        patch = LabelPatch(z, region, labels[region].copy(), key, self.results.get(key), group)
        self.undo_stack.append(patch)
        self.results[key] = result

        view, free = labels[region], ~edited[region]
        new_prob = self._claim(z, label, region)
        new_mask = new_prob > 0.5
        report = WriteReport(label, z, 0, int(new_mask.sum()), protected=int((new_mask & ~free).sum()))
        # retract what the model wrote for this object before, then hand freed pixels to the best other claimant
        stale = free & (view == label) & ~new_mask
        view[stale] = 0
        others = [int(v) for v in np.unique(view) if v not in (0, label)]
        others += [lab for (zz, lab) in self.results if zz == z and lab != label and lab not in others]
        claims = {other: self._claim(z, other, region) for other in others}
        if stale.any() and claims:
            best_value = np.zeros(view.shape, np.int64)
            best_prob = np.full(view.shape, 0.5, np.float32)
            for other, prob in claims.items():
                better = prob > best_prob
                best_value[better], best_prob[better] = other, prob[better]
            refill = stale & (best_value > 0)
            view[refill] = best_value[refill]
        # write the new mask: free pixels, and other objects' model pixels where this result is at least as sure
        target = new_mask & free
        for other in others:
            theirs = target & (view == other)
            if not theirs.any():
                continue
            wins = self._wins(result, other, theirs, new_prob >= claims[other])
            wins |= clicked_patches(result.claimed_at, theirs, (region[0].start, region[1].start))
            lost = int((theirs & ~wins).sum())
            if lost:
                report.kept_by[other] = lost
            if wins.any():
                report.taken_from[other] = int(wins.sum())
            target &= ~(theirs & ~wins)
        target &= (view == 0) | (view == label) | np.isin(view, list(report.taken_from))
        view[target] = label
        report.written = int(((view == label) & free).sum())
        if patch.previous_result is not None:
            report.changed = int((view != patch.before).sum())
        return report

    def _wins(self, result: ObjectResult, other: int, theirs: np.ndarray, surer: np.ndarray) -> np.ndarray:
        """Which of `other`'s model pixels `result` takes (before clicked patches): all of them when its box
        lies inside the other's (a lesion in its organ), none when the other's lies inside its box, else
        where it is at least as sure. Pixels of an object without a result (painted ones) are kept."""
        theirs_result = self.results.get((result.slice_index, other))
        if theirs_result is None:
            return np.zeros_like(theirs)
        if nested_in(result.box_xyxy, theirs_result.box_xyxy):
            return theirs.copy()
        if nested_in(theirs_result.box_xyxy, result.box_xyxy):
            return np.zeros_like(theirs)
        return theirs & surer

    def segment(self, slice_index: int | None, box_xyxy, label: int) -> WriteReport:
        """Predict and apply in one call (scripts, tests)."""
        return self.apply(self.predict(slice_index, box_xyxy, label))

    def undo(self) -> list[LabelPatch]:
        """Restore the labels as they were before the last model write (all of a propagation run);
        returns the undone patches, latest first. What the user painted since stays."""
        if not self.undo_stack:
            raise InputError("nothing to undo")
        group = self.undo_stack[-1].group
        undone = []
        while self.undo_stack and self.undo_stack[-1].group == group:
            patch = self.undo_stack.pop()
            patch.undone = self.results.get(patch.key)
            labels = self.slice_labels(patch.slice_index)
            edited = self.slice_edited(patch.slice_index)[patch.region]
            target = labels[patch.region]
            if patch.changed is not None:  # an edit: exactly its pixels go back, flags included
                target[patch.changed] = patch.before[patch.changed]
                edited[patch.changed] = patch.edited_before[patch.changed]
            else:
                target[~edited] = patch.before[~edited]
            if patch.previous_result is None:
                self.results.pop(patch.key, None)
            else:
                self.results[patch.key] = patch.previous_result
            if patch.restore is not None:
                patch.restore()
            undone.append(patch)
        self.unaccept_empty({patch.slice_index for patch in undone})
        return undone

    def unaccept_empty(self, slice_indices=None) -> list[int | None]:
        """Accepted slices (of `slice_indices`, default all) left with no labels stop being accepted:
        nothing to export or train on there. Returns them."""
        emptied = [z for z in list(self.accepted) if (slice_indices is None or z in slice_indices)
                   and not self.slice_labels(z).any()]
        for z in emptied:
            self.accepted.discard(z)
        return sorted(emptied, key=lambda v: -1 if v is None else v)

    def apply_edit(self, slice_index: int | None, pixels: np.ndarray, value: int,
                   key: tuple[int | None, int]) -> int:
        """A user-side edit (an accepted suggestion): set `pixels` (slice-size bool) to `value`, mark
        them as the user's (never overwritten), as one undo step. Returns the pixels changed."""
        labels, edited = self.slice_labels(slice_index), self.slice_edited(slice_index)
        pixels = pixels & (labels != value)
        rows, cols = np.nonzero(pixels)
        if rows.size == 0:
            return 0
        region = (slice(int(rows.min()), int(rows.max()) + 1), slice(int(cols.min()), int(cols.max()) + 1))
        if self._group is None:  # its own undo step, unless inside a group (accept all)
            self._groups += 1
        group = self._group if self._group is not None else self._groups
        self.undo_stack.append(LabelPatch(slice_index, region, labels[region].copy(), key, self.results.get(key),
                                          group, pixels[region].copy(), edited[region].copy()))
        labels[pixels] = value
        edited[pixels] = True
        return int(rows.size)

    def record_user_edit(self, index) -> None:
        """Mark pixels the user painted or erased (numpy index into the full, un-moved labels array)."""
        self.user_edited_base[index] = True

    def slice_maps(self, slice_index: int | None) -> tuple[np.ndarray, np.ndarray]:
        """(coarse probability, uncertainty) of every object on a slice, combined by maximum."""
        shape = self.slice_shape
        coarse, uncertainty = np.zeros(shape, np.float32), np.zeros(shape, np.float32)
        for (z, _), result in self.results.items():
            if z == slice_index:
                np.maximum(coarse[result.region], result.coarse_prob, out=coarse[result.region])
                np.maximum(uncertainty[result.region], result.uncertainty, out=uncertainty[result.region])
        return coarse, uncertainty

    # ---- review ------------------------------------------------------------------------------------
    def accept(self, slice_index: int | None) -> None:
        """Mark a slice's objects as corrected: export and fine-tuning use accepted slices."""
        z = self.check_slice(slice_index)
        if not self.slice_labels(z).any():
            raise InputError("this slice has no labels to accept")
        self.accepted.add(z)

    def accepted_objects(self) -> list[tuple[int | None, np.ndarray, np.ndarray, dict[int, list[float]]]]:
        """Accepted slices not exported yet: (slice, image copy, labels copy, {label: box}). The box is
        the user's, or a tight one for objects that were only painted. Accepted slices whose labels were
        all erased since are no longer accepted (`unaccept_empty`)."""
        self.unaccept_empty()
        items = []
        for z in sorted(self.accepted - self.exported, key=lambda v: -1 if v is None else v):
            labels = self.slice_labels(z).copy()
            boxes = {}
            for value in np.unique(labels):
                if value:
                    result = self.results.get((z, int(value)))
                    box = result.box_xyxy if result is not None else box_of_mask(labels == value)
                    boxes[int(value)] = [float(v) for v in box]
            items.append((z, np.asarray(self.slice_image(z)).copy(), labels, boxes))
        return items

    def mark_exported(self, slice_indices) -> None:
        self.exported.update(slice_indices)

    def next_uncertain_slice(self, current: int | None = None) -> int | None:
        """The unaccepted slice whose labels are most likely wrong (see `review.review_scores`)."""
        from .review import review_scores

        scores = review_scores(self)
        if not scores:
            return None
        return max(scores, key=lambda z: (scores[z].total, -abs((z or 0) - (current or 0))))

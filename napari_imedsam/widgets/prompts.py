"""Boxes drawn on the `I-MedSAM boxes` layer -> one object each -> model results in the labels.

Every new shape gets the next free object number (shown on the box). A drawn or moved box is
queued by its object number (stable while shapes are added or deleted) and predicted in a worker,
one at a time, the latest edit winning. Ellipses, polygons and lines are used as their bounding box,
with a note.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
from napari.utils.notifications import show_info
from qtpy.QtCore import QTimer

from ..errors import InputError

if TYPE_CHECKING:
    from .dock import IMedSAMWidget

DEBOUNCE_MS = 30  # coalesces the data events napari sends for one edit
ANY_SLICE = object()  # `shape_of`: the object's newest box, whatever its slice


class BoxPrompter:
    """Turns box edits into predictions for the dock."""

    def __init__(self, dock: IMedSAMWidget) -> None:
        self.dock = dock
        self.pending: list[tuple[int, int | None]] = []  # (object, slice) waiting for a prediction, oldest first
        self.clicked: set[tuple[int, int | None]] = set()  # those a click queued (else a drawn or edited box)
        self.syncing = False  # True while the dock itself edits the boxes (undo): no re-prompt
        self.timer = QTimer(dock)
        self.timer.setSingleShot(True)
        self.timer.setInterval(DEBOUNCE_MS)
        self.timer.timeout.connect(self.run_next)
        self._noted: set[int] = set()

    # ---- shapes -> object numbers ------------------------------------------------------------------
    def on_data(self, event) -> None:
        action = str(getattr(event, "action", ""))
        if self.syncing or action not in ("added", "changed") or not getattr(event, "data_indices", None):
            return  # 'adding'/'changing' fire while the mouse is still down
        self.dock.follow(getattr(event, "source", None))  # boxes drawn on another image's layer: that image
        boxes = self.dock.boxes_layer()
        if boxes is None:
            return
        for index in event.data_indices:
            index = int(index) + (len(boxes.data) if int(index) < 0 else 0)
            if 0 <= index < len(boxes.data):
                label = self.object_number(boxes, index)
                self.queue(label, self.dock.layer_set().box_of(boxes.data[index])[0], clicked=False)

    def object_number(self, boxes, index: int) -> int:
        """The object number of shape `index`, assigning one to a new shape: the selected object's when the
        dock's "continue" box is ticked and that object has no box on the shape's slice, else the next free."""
        values = np.nan_to_num(boxes.features["label"].to_numpy(dtype=float), nan=0.0).astype(int)
        if values[index] < 1:
            labels = self.dock.labels_layer()
            used = int(values.max(initial=0))
            if labels is not None and labels.data.size:
                used = max(used, int(labels.data.max()))
            values[index] = self._continued(boxes, index) or used + 1
            boxes.features["label"] = values
            boxes.refresh_text()
            if labels is not None:
                labels.selected_label = int(values[index])  # corrections paint this object by default
        return int(values[index])

    def _continued(self, boxes, index: int) -> int | None:
        """The selected object, if a new box at `index` continues it (see `object_number`)."""
        labels = self.dock.labels_layer()
        if labels is None or not self.dock.continue_object.value:
            return None
        selected = int(labels.selected_label)
        slice_index = self.dock.layer_set().box_of(boxes.data[index])[0]
        if selected < 1 or self.shape_of(selected, slice_index) is not None:
            return None
        return selected

    def shape_of(self, label: int, slice_index=ANY_SLICE) -> tuple[int, np.ndarray, str] | None:
        """(index, vertices, shape type) of object `label`'s box on `slice_index` (by default its newest
        box on any slice), or None if there is none (deleted, or never drawn there)."""
        boxes = self.dock.boxes_layer()
        if boxes is None:
            return None
        values = np.nan_to_num(boxes.features["label"].to_numpy(dtype=float), nan=0.0).astype(int)
        hits = np.nonzero(values == label)[0]
        if slice_index is not ANY_SLICE:
            layers = self.dock.layer_set()
            hits = [int(i) for i in hits if layers.box_of(boxes.data[int(i)])[0] == slice_index]
        if len(hits) == 0:
            return None
        index = int(hits[-1])
        return index, np.asarray(boxes.data[index]), str(boxes.shape_type[index])

    def queue(self, label: int, slice_index: int | None = None, clicked: bool = True) -> None:
        """Predict object `label` on `slice_index` again (a click's slice: the displayed one by default)."""
        if clicked and slice_index is None:
            slice_index = self.dock.layer_set().current_slice()
        key = (label, slice_index)
        if clicked:
            self.clicked.add(key)
        if key in self.pending:
            self.pending.remove(key)
        self.pending.append(key)
        self.timer.start()

    def _prompt_of(self, label: int, slice_index: int | None) -> tuple[np.ndarray, str]:
        """(box, shape kind) to predict `label` with on `slice_index`: its box there, or after a click on a
        slice where it has none (a drawn box without its shape was dropped before), the bounding box of its
        mask there."""
        found = self.shape_of(label, slice_index)
        if found is not None:
            return self.dock.layer_set().box_of(found[1])[1], found[2]
        mask = self.dock.session().slice_labels(slice_index) == label
        if not mask.any():  # a click for no object: it goes, or it would shape the next box's object
            ids = self.dock.clicks.clicks_for(label, slice_index)[1]
            self.dock.clicks.forget(set(ids))
            raise InputError(f"object {label} has no box and no mask on this slice: draw a box for it first"
                             + (" (the click was removed)" if ids else ""))
        from ..inference.boxes import box_of_mask

        return box_of_mask(mask) + np.array([-2.0, -2.0, 2.0, 2.0]), "rectangle"

    # ---- predictions -------------------------------------------------------------------------------
    def run_next(self) -> None:
        """Start a prediction for the oldest queued object, unless one is running."""
        dock = self.dock
        if dock.workers.is_busy("box") or not self.pending:
            return
        key = label, slice_index = self.pending.pop(0)
        drawn = key not in self.clicked  # a drawn or edited box, not a click
        self.clicked.discard(key)
        if drawn and self.shape_of(label, slice_index) is None:
            self.run_next()  # its box was deleted
            return
        try:
            session = dock.session()
            box, kind = self._prompt_of(label, slice_index)
            points, click_ids = dock.clicks.clicks_for(label, slice_index)
            if kind != "rectangle" and label not in self._noted:
                self._noted.add(label)
                show_info(f"object {label}: the {kind} on '{dock.boxes_layer().name}' is used as its bounding box")
        except (InputError, ValueError) as exc:
            dock.error(str(exc))
            self.run_next()
            return
        problem = box_problem(label, box, session.slice_shape)
        if problem:
            dock.error(problem + (self._take_back(label, slice_index) if drawn else ""))
            self.run_next()
            return
        dock.set_status(f"Segmenting object {label}…")

        def predict():
            result = session.predict(slice_index, box, label, points)
            result.clicks = click_ids
            return result

        def show(result) -> None:
            dock.show_result(result)
            if points is not None and self._follow_grown_box(label, slice_index, box, result.box_xyxy):
                dock.set_status(f"{dock.status_text()} The box of object {label} grew to take in the positive "
                                "click.")

        dock.workers.run("box", predict, on_result=show, on_done=self._after, on_error=self._failed)

    def _take_back(self, label: int, slice_index: int | None) -> str:
        """A drawn box the model cannot use goes: back to the object's last box when it has a result there,
        else off the layer (its object number is free again). Returns what the message adds."""
        result = self.dock.session().results.get((slice_index, label))
        self.sync_box(label, slice_index, None if result is None else result.box_xyxy, self.dock.layer_set().corners_of)
        return " The box went back to where it was." if result is not None else " The box was removed."

    def _follow_grown_box(self, label: int, slice_index: int | None, drawn: np.ndarray, used) -> bool:
        """A positive click outside the box grew it (`box_with_clicks`): the drawn box shows the box the
        result used, so what the user sees is what the next click and Undo work with."""
        used = np.asarray(used, float)
        grew = bool((used[:2] < drawn[:2] - 0.5).any() or (used[2:] > drawn[2:] + 0.5).any())
        return grew and self.sync_box(label, slice_index, used, self.dock.layer_set().corners_of)

    def _failed(self, message: str) -> None:
        self.dock.error(message)

    def _after(self) -> None:
        if self.pending:
            self.timer.start()

    # ---- undo support ------------------------------------------------------------------------------
    def sync_box(self, label: int, slice_index: int | None, box_xyxy: np.ndarray | None,
                 make_shape: Callable[[int | None, np.ndarray], np.ndarray]) -> bool:
        """Move object `label`'s box on `slice_index` to `box_xyxy`, or delete it (None); False when the
        object has no box there."""
        found = self.shape_of(label, slice_index)
        boxes = self.dock.boxes_layer()
        if found is None or boxes is None:
            return False
        self.syncing = True
        try:
            index = found[0]
            if box_xyxy is None:
                boxes.selected_data = {index}
                boxes.remove_selected()
            else:
                data = list(boxes.data)
                data[index] = make_shape(slice_index, box_xyxy)
                boxes.data = data
        finally:
            self.syncing = False
        return True


def box_problem(label: int, box: np.ndarray, shape_hw: tuple[int, int]) -> str | None:
    """Why the model cannot use a box (too thin, outside the image), as the dock says it; None: usable."""
    from ..inference.boxes import validate_box

    if box[2] - box[0] < 1 or box[3] - box[1] < 1:
        return (f"the box of object {label} is {box[2] - box[0]:.0f} x {box[3] - box[1]:.0f} px: "
                "draw a box at least 2 pixels wide and high around the object.")
    try:
        validate_box(box, shape_hw)
    except InputError as exc:
        return f"object {label}: {exc}."
    return None

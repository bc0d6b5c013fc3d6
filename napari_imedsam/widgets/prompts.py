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


class BoxPrompter:
    """Turns box edits into predictions for the dock."""

    def __init__(self, dock: IMedSAMWidget) -> None:
        self.dock = dock
        self.pending: list[int] = []  # object numbers waiting for a prediction, oldest first
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
        boxes = self.dock.boxes_layer()
        if boxes is None:
            return
        for index in event.data_indices:
            index = int(index) + (len(boxes.data) if int(index) < 0 else 0)
            if 0 <= index < len(boxes.data):
                label = self.object_number(boxes, index)
                if label in self.pending:
                    self.pending.remove(label)
                self.pending.append(label)
        self.timer.start()

    def object_number(self, boxes, index: int) -> int:
        """The object number of shape `index`, assigning the next free one to a new shape."""
        values = np.nan_to_num(boxes.features["label"].to_numpy(dtype=float), nan=0.0).astype(int)
        if values[index] < 1:
            labels = self.dock.labels_layer()
            used = int(values.max(initial=0))
            if labels is not None and labels.data.size:
                used = max(used, int(labels.data.max()))
            values[index] = used + 1
            boxes.features["label"] = values
            boxes.refresh_text()
            if labels is not None:
                labels.selected_label = int(values[index])  # corrections paint this object by default
        return int(values[index])

    def shape_of(self, label: int) -> tuple[int, np.ndarray, str] | None:
        """(index, vertices, shape type) of the box for object `label`, or None if it was deleted."""
        boxes = self.dock.boxes_layer()
        if boxes is None:
            return None
        values = np.nan_to_num(boxes.features["label"].to_numpy(dtype=float), nan=0.0).astype(int)
        hits = np.nonzero(values == label)[0]
        if hits.size == 0:
            return None
        index = int(hits[-1])
        return index, np.asarray(boxes.data[index]), str(boxes.shape_type[index])

    # ---- predictions -------------------------------------------------------------------------------
    def run_next(self) -> None:
        """Start a prediction for the oldest queued object, unless one is running."""
        dock = self.dock
        if dock.workers.is_busy("box") or not self.pending:
            return
        label = self.pending.pop(0)
        found = self.shape_of(label)
        if found is None:
            self.run_next()
            return
        index, vertices, kind = found
        try:
            session = dock.session()
            slice_index, box = dock.layer_set().box_of(vertices)
            if kind != "rectangle" and label not in self._noted:
                self._noted.add(label)
                show_info(f"object {label}: the {kind} on '{dock.boxes_layer().name}' is used as its bounding box")
            if box[2] - box[0] < 1 or box[3] - box[1] < 1:
                raise InputError(f"the box of object {label} is {box[2] - box[0]:.0f} x {box[3] - box[1]:.0f} px: "
                                 "draw a box at least 2 pixels wide and high around the object")
        except (InputError, ValueError) as exc:
            dock.error(str(exc))
            self.run_next()
            return
        dock.set_status(f"Segmenting object {label}…")
        dock.workers.run("box", session.predict, slice_index, box, label, on_result=dock.show_result,
                         on_done=self._after, on_error=self._failed)

    def _failed(self, message: str) -> None:
        self.dock.error(message)

    def _after(self) -> None:
        if self.pending:
            self.timer.start()

    # ---- undo support ------------------------------------------------------------------------------
    def sync_box(self, label: int, slice_index: int | None, box_xyxy: np.ndarray | None,
                 make_shape: Callable[[int | None, np.ndarray], np.ndarray]) -> None:
        """Move object `label`'s box back to `box_xyxy` on `slice_index`, or delete it (None)."""
        found = self.shape_of(label)
        boxes = self.dock.boxes_layer()
        if found is None or boxes is None:
            return
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

"""Click prompts: positive and negative points on the `I-MedSAM points` layer, per object.

A click belongs to the object selected in the labels layer (the last box's, by default), unless it
plainly concerns another one (`inference.clicks.owner_of_click`: a negative click on another object's
mask, or a click outside the selected object that lands in one other object's box); it re-runs
that object on the clicked slice with its box and all its clicks there: only the prompt path and the
decoders run, never the encoder. Shift-C switches to positive clicks, Shift-E to negative ones,
Shift-B back to drawing boxes. Undo takes back the result and the click that caused it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from napari.layers import Points
from napari.utils.colormaps.standardize_color import transform_color
from napari.utils.notifications import show_info

if TYPE_CHECKING:
    from .dock import IMedSAMWidget

POINTS = "I-MedSAM points"
POSITIVE, NEGATIVE = "lime", "red"


def to_rgba(name: str) -> np.ndarray:
    return transform_color(name)[0]


MARKER_SCREEN_PX = (8, 16)  # a click marker's smallest and largest size on screen


class ClickActions:
    def __init__(self, dock: IMedSAMWidget) -> None:
        self.dock = dock
        self.positive = True
        self._next_id = 1
        self._told_routing = False  # the first click that goes to another object than the selected one says so

    def layer(self) -> Points | None:
        return self.dock.plugin_layer(POINTS)

    def _ensure(self) -> Points:
        layer = self.layer()
        if layer is None:
            layers = self.dock.layer_set()
            n = len(layers.shape)
            layer = Points(np.zeros((0, n)), ndim=n, name=layers.name_for(POINTS), metadata=layers.link(POINTS),
                           size=marker_size(layers.shape, layers.axis), canvas_size_limits=MARKER_SCREEN_PX,
                           border_color="white", border_width=0.1,
                           features={"label": np.zeros(0, int), "positive": np.zeros(0, bool),
                                     "click": np.zeros(0, int)},
                           scale=layers.image.scale[-n:], translate=layers.image.translate[-n:])
            self.dock.viewer.add_layer(layer)
            layer = self.layer()
        self.dock.connect_layer(layer)
        return layer

    def start(self, positive: bool) -> None:
        """Switch to clicking: the points layer in add mode, the next clicks positive or negative."""
        try:
            self.dock.session()
            layer = self._ensure()
        except ValueError as exc:
            self.dock.error(str(exc))
            return
        self.positive = positive
        layer.selected_data = set()  # napari gives the current colour to the selected points too
        layer.current_face_color = POSITIVE if positive else NEGATIVE
        layer.feature_defaults = {"label": 0, "positive": positive, "click": 0}
        self.dock.viewer.layers.selection.active = layer
        layer.mode = "add"
        label = int(self.dock.labels_layer().selected_label)
        self.dock.set_status(f"{'Positive' if positive else 'Negative'} clicks for object {label}: click where the "
                             f"mask {'misses the object' if positive else 'covers too much'} "
                             "(Shift-C positive, Shift-E negative, Shift-B back to boxes).")

    def to_boxes(self) -> None:
        boxes = self.dock.boxes_layer()
        if boxes is not None:
            self.dock.viewer.layers.selection.active = boxes
            boxes.mode = "add_rectangle"
            self.dock.set_status("Drawing boxes: every box is a new object.")

    def on_data(self, event) -> None:
        """A click was added: give it its object and sign, and queue that object."""
        if str(getattr(event, "action", "")) != "added":
            return
        self.dock.follow(getattr(event, "source", None))  # a click on another image's points: that image
        layer = self.layer()
        if layer is None:
            return
        features = layer.features
        # after ids an earlier dock of this viewer gave
        self._next_id = max(self._next_id, int(features["click"].to_numpy().max(initial=0)) + 1)
        labels = self.dock.labels_layer()
        selected = int(labels.selected_label)
        owners = []
        colours = np.array(layer.face_color)
        for index in event.data_indices:
            index = int(index) + (len(layer.data) if int(index) < 0 else 0)
            # an added point is a new click, whatever features it came with: napari gives it those of
            # the point selected before (even one undo removed since), so they never say it is new
            if 0 <= index < len(layer.data):
                owner, slice_index = self._owner(np.asarray(layer.data[index]), selected)
                features.loc[index, ["label", "positive", "click"]] = [owner, self.positive, self._next_id]
                self._next_id += 1
                colours[index] = to_rgba(POSITIVE if self.positive else NEGATIVE)
                owners.append((owner, slice_index))
        layer.features = features
        if owners:
            layer.face_color = colours  # the sign's colour, whatever colour napari had current
            layer.feature_defaults = {"label": 0, "positive": self.positive, "click": 0}
        for owner, slice_index in owners:
            if owner != selected:  # the click plainly concerns another object: it goes there, and so does paint
                labels.selected_label = owner
                if not self._told_routing:
                    self._told_routing = True
                    show_info(f"I-MedSAM: click sent to object {owner}")  # short: the toast is narrow
            self.dock.prompter.queue(owner, slice_index)

    def _owner(self, vertex: np.ndarray, selected: int) -> tuple[int, int | None]:
        """(object, slice) of a click: see `inference.clicks.owner_of_click`."""
        from ..inference.clicks import owner_of_click

        layers = self.dock.layer_set()
        slice_index, (x, y, _, _) = layers.box_of(vertex[None])
        try:
            session = self.dock.session()
            labels = session.slice_labels(slice_index)
        except (IndexError, ValueError):  # no model yet, or a click outside the volume: the prompter says so
            return selected, slice_index
        boxes = {label: result.box_xyxy for (z, label), result in session.results.items() if z == slice_index}
        return owner_of_click(labels, boxes, x, y, self.positive, selected), slice_index

    def clicks_for(self, label: int, slice_index: int | None) -> tuple[np.ndarray | None, tuple[int, ...]]:
        """The object's clicks on a slice as (N, 3) rows of (x, y, positive), and their ids."""
        layer = self.layer()
        if layer is None or not len(layer.data):
            return None, ()
        features = layer.features
        layers = self.dock.layer_set()
        rows, ids = [], []
        for vertex, (lab, positive, click) in zip(np.asarray(layer.data),
                                                  features[["label", "positive", "click"]].to_numpy()):
            point_slice, (x, y, _, _) = layers.box_of(np.asarray(vertex)[None])
            if int(lab) == label and point_slice == slice_index:
                rows.append((x, y, 1.0 if positive else 0.0))
                ids.append(int(click))
        return (np.asarray(rows) if rows else None), tuple(ids)

    def forget(self, click_ids: set[int]) -> None:
        """Remove clicks (their result was undone)."""
        layer = self.layer()
        if layer is None or not click_ids:
            return
        keep = ~np.isin(layer.features["click"].to_numpy(), list(click_ids))
        if keep.all():
            return
        self.dock.prompter.syncing = True
        try:
            layer.selected_data = set(np.nonzero(~keep)[0].tolist())
            layer.remove_selected()
        finally:
            self.dock.prompter.syncing = False


def marker_size(shape: tuple[int, ...], axis: int | None) -> float:
    """A click's marker in image pixels: about 1 % of the slice's longer side (at least 3), so that it
    shows at the fitted view and, capped on screen (`MARKER_SCREEN_PX`), hides little when zoomed in."""
    in_plane = [size for index, size in enumerate(shape) if index != axis][-2:]
    return max(3.0, 0.01 * max(in_plane))

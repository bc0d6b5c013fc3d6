"""The corrector's suggestions in napari: a layer showing regions to remove (blue) and to add (green)
for the objects on the displayed slice; keys accept the one under the cursor, accept all, or dismiss.
Accepted suggestions are the user's edits (never overwritten by the model, one undo step each)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from napari.layers import Labels
from napari.utils.colormaps import DirectLabelColormap
from napari.utils.notifications import show_info

from ..errors import InputError

if TYPE_CHECKING:
    from .dock import IMedSAMWidget

SUGGESTIONS = "I-MedSAM suggestions"
# blue, not red: the uncertainty heatmap under them runs red to yellow
COLORS = DirectLabelColormap(color_dict={1: "blue", 2: "lime", None: "transparent"})


class CorrectionActions:
    def __init__(self, dock: IMedSAMWidget) -> None:
        self.dock = dock

    def layer(self) -> Labels | None:
        return self.dock.plugin_layer(SUGGESTIONS)

    def show(self, slice_index: int | None) -> int:
        """Draw the suggestions of a slice (creating the layer the first time there are any); returns how
        many pixels they cover."""
        from ..inference.suggestions import suggestion_map

        session = self.dock.session()
        shown = suggestion_map(session, slice_index)
        layer = self.layer()
        if layer is None:
            if not shown.any():
                return 0
            layers = self.dock.layer_set()
            place = {"scale": layers.image.scale[-len(layers.shape):],
                     "translate": layers.image.translate[-len(layers.shape):]}
            layer = Labels(np.zeros(layers.shape, np.uint8), name=layers.name_for(SUGGESTIONS), colormap=COLORS,
                           opacity=0.7, metadata=layers.link(SUGGESTIONS), **place)
            viewer = self.dock.viewer
            active = viewer.layers.selection.active
            viewer.add_layer(layer)
            boxes = self.dock.boxes_layer()
            if boxes is not None:  # keep the boxes on top
                viewer.layers.move(viewer.layers.index(boxes.name), len(viewer.layers))
            if active is not None:  # a new layer takes the selection: give it back (the user may be drawing)
                viewer.layers.selection.active = viewer.layers[active.name]
            layer = self.layer()
        axis = self.dock.layer_set().axis
        target = layer.data if axis is None else np.moveaxis(layer.data, axis, 0)[slice_index]
        target[...] = shown
        layer.refresh()
        return int(np.count_nonzero(shown))

    def _after(self, slice_index: int | None, message: str) -> None:
        self.show(slice_index)
        self.dock.labels_layer().refresh()
        self.dock.set_status(message)

    def accept_under_cursor(self) -> None:
        from ..inference.suggestions import accept, suggestion_at

        dock = self.dock
        if self._displayed() is None:
            return
        try:
            session, layers = dock.session(), dock.layer_set()
            point = layers.image.world_to_data(dock.viewer.cursor.position)
            z = layers.current_slice()
            in_plane = [a for a in range(len(layers.shape)) if a != layers.axis]
            row, col = (int(round(point[a])) for a in in_plane[-2:])
            found = suggestion_at(session, z, row, col)
            if found is None:
                raise InputError("no suggestion under the cursor: point at a blue (remove) or green (add) region")
        except (InputError, ValueError) as exc:
            dock.error(str(exc))
            return
        result, kind, region = found
        changed = accept(session, result, kind, region)
        self._after(z, f"Suggestion accepted: {changed} px {'removed from' if kind == 'remove' else 'added to'} "
                       f"object {result.label} (Undo takes it back).")

    def _displayed(self):
        """(session, displayed slice), or None after one message (no image, no model, no corrector)."""
        try:
            session, model = self.dock.session(), self.dock.state.model
            if model is None:
                raise InputError("no model loaded: choose one and press 'Load model'")
            if session.corrector is None:  # not an error: say why there is nothing to accept or dismiss
                message = (f"{model.model_id} has no corrector, so it makes no suggestions: choose a corrector "
                           "file in the dock (imedsam train --mode corrector), or use demo")
                show_info(message)
                self.dock.set_status(message + ".")
                return None
            return session, self.dock.layer_set().current_slice()
        except (InputError, ValueError) as exc:
            self.dock.error(str(exc))
            return None

    def accept_all(self) -> None:
        from ..inference.suggestions import accept_all

        if (displayed := self._displayed()) is None:
            return
        session, z = displayed
        changed = accept_all(session, z)
        self._after(z, f"All suggestions on this slice accepted: {changed} px changed (one Undo takes them back)."
                    if changed else "No suggestions on this slice to accept.")

    def dismiss(self) -> None:
        from ..inference.suggestions import dismiss

        if (displayed := self._displayed()) is None:
            return
        session, z = displayed
        dropped = dismiss(session, z)
        self._after(z, f"{dropped} suggestion(s) dismissed.")
        if not dropped:
            show_info("no suggestions on this slice")

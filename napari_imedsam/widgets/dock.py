"""The I-MedSAM dock widget: controls wired to the session, the box prompter, volume actions and
fine-tuning. No tensor math here, and no model code at import time: the model loads in a worker,
so opening the dock from the Plugins menu of a running napari is instant and safe (see
`_lazy_imports`)."""

from __future__ import annotations

from typing import Any

import napari
import numpy as np
from napari.layers import Image, Labels, Shapes
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QEvent, QTimer
from qtpy.QtWidgets import QWidget

from .._lazy_imports import guard_triton
from ..errors import InputError
from ..inference.windows import CT_PRESETS, MR_PERCENTILES, IntensityWindow
from . import actions, controls, models, state
from .clicks import POINTS, ClickActions
from .controls import AS_DISPLAYED, CHECKPOINT
from .corrections import CorrectionActions
from .finetune import FineTuner
from .layers import BOXES, IMAGE_ID, LABELS, LINK, UNCERTAINTY, LayerSet, fit_if_cropped, fit_view_to, image_id
from .prefetch import Prefetcher
from .prompts import BoxPrompter
from .state import identity
from .volume import VolumeActions
from .workers import Workers

FIT_DELAY_MS = 100  # after the dock is shown, the canvas has resized by then


class IMedSAMWidget(QWidget):
    """Dock widget: pick image and model, draw boxes, review uncertainty, correct, accept, fine-tune."""

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        super().__init__()
        guard_triton()
        self.viewer = napari_viewer
        self.state = state.state_of(napari_viewer)
        self.state.docks += 1
        if self.state.dock is not None:  # the dock was closed and opened again: this one takes over
            self.state.dock.detach()
        self.state.dock = self
        self.workers = Workers(self.error, self)
        self.prompter = BoxPrompter(self)
        self.volume = VolumeActions(self)
        self.tuner = FineTuner(self)
        self.corrections = CorrectionActions(self)
        self.clicks = ClickActions(self)
        self._connected: set[int] = set()
        self.prefetcher = Prefetcher(self)
        self._build_controls()
        actions.register(napari_viewer, self)
        self.viewer.dims.events.current_step.connect(self.prefetch)
        self.viewer.layers.selection.events.active.connect(self._follow_active)
        if self.state.model is not None:  # the dock was closed and opened again: same model, same work
            models.reattach(self)
            self.set_status(f"Model {self.state.model.model_id} ready. Draw a box on the image.")

    def _build_controls(self) -> None:
        controls.build(self)
        self.model_combo.changed.connect(lambda v: setattr(self.checkpoint, "visible", v == CHECKPOINT))
        self.load_button.clicked.connect(self.load_selected_model)
        self.image_combo.changed.connect(self._image_switched)
        self.window_combo.changed.connect(self.prefetch)
        self.show_uncertainty.changed.connect(self._show_uncertainty)
        self.mirror.changed.connect(self._mirror_changed)
        self.propagate_button.clicked.connect(self.propagate)
        self.cancel_button.clicked.connect(self.volume.cancel)
        self.next_button.clicked.connect(self.next_uncertain_slice)
        self.accept_button.clicked.connect(self.accept_slice)
        self.undo_button.clicked.connect(self.undo)
        self.positive_button.clicked.connect(self.positive_clicks)
        self.negative_button.clicked.connect(self.negative_clicks)
        self.boxes_button.clicked.connect(self.draw_boxes)
        self.suggestion_button.clicked.connect(self.accept_suggestion)
        self.all_suggestions_button.clicked.connect(self.accept_all_suggestions)
        self.dismiss_button.clicked.connect(self.dismiss_suggestions)
        self.export_button.clicked.connect(self.tuner.export)
        self.finetune_button.clicked.connect(self.tuner.start)
        self.cancel_finetune_button.clicked.connect(self.tuner.cancel)
        self.version_combo.changed.connect(self.tuner.use_version)
    def reset_choices(self, event: Any = None) -> None:
        """napari calls this when layers change: refresh the image picker."""
        self.image_combo.reset_choices()

    # ---- model -----------------------------------------------------------------------------------
    def load_selected_model(self) -> None:
        models.load_selected(self)

    def set_model(self, loaded, corrector=None) -> None:
        """Use an already loaded model, and optionally its Dual False Corrector (the Load button ends here)."""
        models.use(self, loaded, corrector)

    # ---- layers and the session ------------------------------------------------------------------
    def image_layer(self) -> Image | None:
        return self.image_combo.value

    def layer_set(self) -> LayerSet:
        image = self.image_layer()
        if image is None:
            raise InputError("no image layer: open an image first (File > Open Sample > I-MedSAM)")
        return LayerSet(self.viewer, image)

    def _image_switched(self, image: Any) -> None:
        """The dock's image changed: show it and its I-MedSAM layers, hide the other annotated images
        (those with I-MedSAM layers; other images stay as they are), fit the view when its extent
        differs, then get the image ready."""
        previous, self._shown = getattr(self, "_shown", None), image
        others = [other for other in self.image_combo.choices
                  if image is not None and identity(other) != identity(image) and IMAGE_ID in other.metadata]
        if others and self.state.model is not None and (previous is None or identity(previous) != identity(image)):
            LayerSet(self.viewer, image).show(self.show_uncertainty.value)
            for other in others:
                LayerSet(self.viewer, other).hide()
            if previous is not None:  # fit the view when the extent differs (2D <-> 3D included)
                before, now = np.asarray(previous.extent.world), np.asarray(image.extent.world)
                if before.shape != now.shape or not np.allclose(before, now):
                    fit_view_to(self.viewer, image)
            self.set_status(f"Annotating '{image.name}'. Draw a box on it; its work is kept apart from the other "
                            "images'.")
        models.image_changed(self)

    def _follow_active(self, event) -> None:
        self.follow(event.value)

    def follow(self, layer: Any) -> None:
        """A plugin layer of another image was selected or drawn on: work on that image."""
        link = getattr(layer, "metadata", {}).get(LINK) if layer is not None else None
        current = self.image_layer()
        if not isinstance(link, dict) or (current is not None and image_id(current) == link.get("image")):
            return
        image = self.image_with_id(link.get("image"))
        if image is not None:
            self.image_combo.value = image

    def image_with_id(self, key: str | None) -> Any:
        """The image in the dock's list whose plugin layers carry `key` (`layers.image_id`), or None."""
        return next((image for image in self.image_combo.choices
                     if key is not None and image.metadata.get(IMAGE_ID) == key), None)

    def plugin_layer(self, role: str, kind: type = object) -> Any:
        """The current image's plugin layer in `role` (see `layers.LINK`), or None."""
        image = self.image_layer()
        layer = None if image is None else LayerSet(self.viewer, image).find(role)
        return layer if isinstance(layer, kind) else None

    def labels_layer(self) -> Labels | None:
        return self.plugin_layer(LABELS, Labels)

    def boxes_layer(self) -> Shapes | None:
        return self.plugin_layer(BOXES, Shapes)

    def ensure_layers(self) -> tuple:
        layers = self.layer_set()
        boxes, labels, coarse, uncertainty = layers.ensure()
        if self.connect_layer(boxes) and len(boxes.data) == 0:
            boxes.mode = "add_rectangle"  # ready to draw
        if self.connect_layer(labels):
            self._show_uncertainty(self.show_uncertainty.value)
        self.state.image_key = image_id(layers.image)  # a reopened dock comes back to this image
        return boxes, labels, coarse, uncertainty

    def connect_layer(self, layer: Any) -> bool:
        """Handle a plugin layer's edits in this dock (boxes -> predictions, paint -> user edits, points ->
        clicks); returns whether it was newly connected."""
        role = (layer.metadata.get(LINK) or {}).get("role")
        handler = {BOXES: self.prompter.on_data, LABELS: self._on_paint, POINTS: self.clicks.on_data}.get(role)
        if handler is None or identity(layer) in self._connected:
            return False
        self._connected.add(identity(layer))
        (layer.events.paint if role == LABELS else layer.events.data).connect(handler)
        return True

    def window(self) -> IntensityWindow | None:
        choice = self.window_combo.value
        if choice == AS_DISPLAYED:
            low, high = self.image_layer().contrast_limits
            return IntensityWindow("window", level=(low + high) / 2, width=max(high - low, 1e-6))
        if choice.startswith("CT "):
            return CT_PRESETS[choice[3:]]
        return MR_PERCENTILES if choice == "MR percentiles" else None

    def session(self):
        """The annotation session of the current image (created on first use)."""
        layers = self.layer_set()
        layers.check_dimensions()
        if self.state.predictor is None:
            raise InputError("no model loaded: choose one and press 'Load model'")
        _, labels, _, _ = self.ensure_layers()
        window = None if self.layer_set().image.rgb and self.window_combo.value == AS_DISPLAYED else self.window()
        return state.session_for(self.state, layers.image, labels, layers.axis, window, layers.image.rgb)

    def _on_paint(self, event) -> None:
        """Remember what the user painted or erased: model results never overwrite it."""
        labels = event.source if isinstance(getattr(event, "source", None), Labels) else self.labels_layer()
        edited = self.state.edited.get(identity(labels))
        if edited is None or edited.shape != labels.data.shape:
            edited = self.state.edited[identity(labels)] = np.zeros(labels.data.shape, bool)
        for atom in event.value:
            if hasattr(atom, "slice_key"):
                region = edited[atom.slice_key]
                if atom.mask is None:
                    region[...] = True
                else:
                    region[atom.mask] = True
            else:
                edited[atom[0]] = True

    def show_result(self, result, quiet: bool = False) -> None:
        """Apply a worker's result to the labels and show every object's heatmap on that slice. Layers
        are redrawn only when that slice is displayed (napari reads the arrays when the user goes there)."""
        session = self.session()
        report = session.apply(result)
        layers = self.layer_set()
        shown = result.slice_index is None or result.slice_index == layers.current_slice()
        layers.write_maps(result.slice_index, *session.slice_maps(result.slice_index), refresh=shown)
        if shown:
            self.labels_layer().refresh()
        suggested = self.corrections.show(result.slice_index) if session.corrector is not None and shown else 0
        if not quiet:
            own = [getattr(result, kind, None) for kind in ("remove", "add")]  # this object's (None: not asked)
            if own[0] is not None and own[1] is not None and not (own[0].any() or own[1].any()):
                hint = f"The corrector suggests no change to object {result.label}. Correct"
            elif suggested:
                whose = "" if own[0] is not None else " for other objects (none after clicks)"
                hint = f"Suggestions{whose}: blue = remove, green = add; accept or dismiss them, or correct"
            else:
                hint = "Correct"
            self.set_status(f"{report.summary()} Mean uncertainty {result.mean_uncertainty:.3f}. "
                            f"{hint} with the label tools, then Accept slice.")
            if not self.isVisible():  # the dock is closed: say it where the user looks
                show_info(f"I-MedSAM: {report.summary()}")

    # ---- actions (buttons and keys) ---------------------------------------------------------------
    def _show_uncertainty(self, visible: bool) -> None:
        """Heatmap on: masks are drawn as outlines over it, so both stay readable; off: filled masks."""
        heatmap = self.plugin_layer(UNCERTAINTY)
        if heatmap is not None:
            heatmap.visible = visible
        labels = self.labels_layer()
        if labels is not None:
            labels.contour, labels.opacity = (2, 0.9) if visible else (0, 0.6)

    def _mirror_changed(self, on: bool) -> None:
        """The next boxes and clicks average over the image's mirrors, or stop doing so (propagation always does)."""
        if self.state.predictor is not None:
            self.state.predictor.mirror = bool(on)
        self.set_status("Mirror averaging on: each box runs 4 times (slower, better masks)." if on else
                        "Mirror averaging off.")

    def toggle_uncertainty(self) -> None:
        self.show_uncertainty.value = not self.show_uncertainty.value

    def accept_slice(self) -> None:
        try:
            session, z = self.session(), self.layer_set().current_slice()
            session.accept(z)
        except (InputError, ValueError) as exc:
            self.error(str(exc))
            return
        done = sorted(s for s in session.accepted if s is not None)
        self.set_status("Slice accepted." if z is None else f"Slice {z} accepted; accepted slices: {done}")

    def undo(self) -> None:
        try:
            session = self.session()
            accepted = set(session.accepted)
            patches = session.undo()
        except InputError as exc:
            show_info(str(exc))  # "nothing to undo" is not an error
            self.set_status(f"{str(exc).capitalize()}.")  # not the last undo's line
            return
        layers = self.layer_set()
        for patch in patches:
            label = patch.key[1]
            previous = patch.previous_result
            if self.prompter.shape_of(label, patch.slice_index) is not None:
                self.prompter.sync_box(label, patch.slice_index, None if previous is None else previous.box_xyxy,
                                       layers.corners_of)
            if patch.undone is not None:  # the clicks that made the undone result go with it
                self.clicks.forget(set(patch.undone.clicks) - set(() if previous is None else previous.clicks))
        for z in {patch.slice_index for patch in patches}:
            layers.write_maps(z, *session.slice_maps(z))
            self.corrections.show(z)
        labels = self.labels_layer()
        labels.refresh()
        objects = sorted({patch.key[1] for patch in patches})
        remaining = [key[1] for key in session.results]
        selected = int(labels.selected_label)
        if selected in objects and selected not in remaining and remaining:  # the undo took its object away:
            labels.selected_label = remaining[-1]  # clicks and paint go to the newest object left
        emptied = sorted(accepted - session.accepted, key=lambda v: -1 if v is None else v)
        note = "" if not emptied else (" The slice has no labels left: no longer accepted." if emptied == [None] else
                                       f" No labels left on accepted slice(s) {', '.join(map(str, emptied))}: "
                                       "no longer accepted.")
        whose = f"object {objects[0]}" if len(objects) == 1 else f"objects {', '.join(map(str, objects))}"
        what = "accepted suggestion(s)" if all(patch.changed is not None for patch in patches) else \
            f"{len(patches)} result(s)"  # an accepted suggestion is one edit per object, not a model result
        self.set_status(f"Undone: {what} of {whose}.{note}")

    def positive_clicks(self) -> None:
        self.clicks.start(positive=True)

    def negative_clicks(self) -> None:
        self.clicks.start(positive=False)

    def draw_boxes(self) -> None:
        self.clicks.to_boxes()

    def accept_suggestion(self) -> None:
        self.corrections.accept_under_cursor()

    def accept_all_suggestions(self) -> None:
        self.corrections.accept_all()

    def dismiss_suggestions(self) -> None:
        self.corrections.dismiss()

    def propagate(self) -> None:
        self.volume.propagate()

    def next_uncertain_slice(self) -> None:
        self.volume.next_uncertain_slice()

    def go_to_slice(self, z: int | None) -> None:
        self.layer_set().go_to_slice(z)

    def current_slice(self) -> int | None:
        return self.layer_set().current_slice()

    def prefetch(self, event=None) -> None:
        """Embed every slice in the background, nearest the displayed slice first (whole-slice models)."""
        self.prefetcher.update()

    # ---- messages and lifetime --------------------------------------------------------------------
    def set_status(self, text: str) -> None:
        self.status.setText(text)

    def status_text(self) -> str:
        return self.status.text()

    def error(self, message: str) -> None:
        self.set_status(f"Error: {message}")
        show_error(message)

    def wait_until_idle(self, timeout_ms: int = 60000, background: bool = False) -> None:
        """Block (processing Qt events) until no worker runs (`background`: background embedding
        included); for scripts and tests."""
        from qtpy.QtCore import QCoreApplication, QElapsedTimer

        clock = QElapsedTimer()
        clock.start()
        while (self.workers.is_busy() or self.prompter.pending or (background and self.workers.is_busy("prefetch"))
               ) and clock.elapsed() < timeout_ms:
            QCoreApplication.processEvents()

    def showEvent(self, event) -> None:  # noqa: N802 - Qt API
        super().showEvent(event)
        window = self.window_qt()
        if window is not None and not getattr(self, "_watching", False):
            window.installEventFilter(self)
            self._watching = True
            QTimer.singleShot(FIT_DELAY_MS, self._fit_if_cropped)  # once the canvas has given the dock its room

    def _fit_if_cropped(self) -> None:
        try:
            if self.image_layer() is not None:
                fit_if_cropped(self.viewer, self.image_layer())
        except RuntimeError:  # the dock or the viewer was closed within FIT_DELAY_MS
            return

    def window_qt(self):
        return QWidget.window(self) if QWidget.window(self) is not self else None

    def eventFilter(self, watched, event) -> bool:  # noqa: N802 - Qt API
        if event.type() == QEvent.Type.Close:
            self.shutdown()
        return False

    def detach(self) -> None:
        """Stop handling layer and viewer events (a newer dock on the same viewer handles them)."""
        callbacks = (self.prompter.on_data, self.clicks.on_data, self._on_paint)
        for layer in self.viewer.layers:
            for emitter in (layer.events.data, getattr(layer.events, "paint", None)):
                for callback in callbacks if emitter is not None else ():
                    emitter.disconnect(callback)
        self.viewer.dims.events.current_step.disconnect(self.prefetch)
        self.viewer.layers.selection.events.active.disconnect(self._follow_active)
        self._connected.clear()

    def shutdown(self) -> None:
        """The window closes: cancel propagation and fine-tuning, wait for workers, forget this viewer."""
        self.tuner.cancel()
        self.prefetcher.stop()
        self.workers.shutdown()
        actions.unregister(self.viewer, self)
        state.forget(self.viewer)

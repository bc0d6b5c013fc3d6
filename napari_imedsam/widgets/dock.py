"""The I-MedSAM dock widget: layers <-> AnnotationSession, model work in thread workers.

Thin by design: no tensor math here. Boxes come from a Shapes layer (rectangles), results go to
three layers (coarse probability, uncertainty, labels) through `AnnotationSession`, which owns
the annotation rules. Every model call runs in a napari thread worker.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import napari
import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, Label, PushButton, SpinBox, create_widget
from napari.layers import Image, Labels, Shapes
from napari.qt.threading import create_worker
from napari.utils import progress
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QObject, QTimer, Signal
from qtpy.QtWidgets import QVBoxLayout, QWidget

from ..inference.predictor import Predictor
from ..inference.preprocess import CT_PRESETS, MR_PERCENTILES, IntensityWindow, box_from_corners_rc
from ..inference.session import AnnotationSession, ObjectResult
from ..io.export import export_slices
from ..model.registry import REGISTRY, LoadedModel, load_model
from ..model.weights import trainable_state

BOXES, LABELS = "I-MedSAM boxes", "I-MedSAM labels"
COARSE, UNCERTAINTY = "I-MedSAM coarse probability", "I-MedSAM uncertainty"
UNCERTAINTY_LIMITS = (0.0, 0.25)  # predictive variance p(1 - p) peaks at 0.25 where p = 0.5
UNTRAINED_TINY = "tiny (untrained, for testing)"
CHECKPOINT = "checkpoint file…"
WINDOWS = ["auto", "layer contrast limits", *(f"CT {name}" for name in CT_PRESETS), "MR percentiles"]


@dataclass
class _Failure:
    """An error raised in a worker, carried back to the GUI thread as a value (one notification)."""

    message: str


class _EpochSignal(QObject):
    """Carries per-epoch training records from the worker thread to the GUI thread."""

    epoch = Signal(dict)


def _guarded(func, *args):
    try:
        return func(*args)
    except (ValueError, RuntimeError, OSError, MemoryError) as exc:  # InputError/CheckpointError are ValueErrors
        return _Failure(str(exc))


class IMedSAMWidget(QWidget):
    """Dock widget: pick image and model, draw boxes, review uncertainty, correct, accept."""

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.model: LoadedModel | None = None
        self.predictor: Predictor | None = None
        self.session: AnnotationSession | None = None
        self._session_key: tuple | None = None
        self._user_edited: dict[int, np.ndarray] = {}
        self._box_worker = None
        self._pending_box: int | None = None
        self._propagation = None
        self._prefetch = None
        self._connected: set[int] = set()  # ids of box layers whose events we listen to
        self._versions: dict[str, tuple[dict, str]] = {}  # adapter version -> (trainable tensors, id)
        self._finetune = None
        self._finetune_cancelled = False
        self._finetune_progress = None
        self.last_report = None

        self.image_combo = create_widget(annotation=Image, label="image")
        self.model_combo = ComboBox(label="model", choices=[*REGISTRY, UNTRAINED_TINY, CHECKPOINT])
        self.checkpoint = FileEdit(label="checkpoint", filter="*.pth *.pt *.safetensors", visible=False)
        self.device_combo = ComboBox(label="device", choices=["auto", "cpu", "cuda", "mps"])
        self.adapters = FileEdit(label="adapters", filter="*.safetensors", nullable=True, value=None)
        self.load_button = PushButton(text="Load model")
        self.window_combo = ComboBox(label="intensity", choices=WINDOWS)
        self.show_uncertainty = CheckBox(text="Show uncertainty [Shift-U]", value=True)
        self.propagate_button = PushButton(text="Propagate through volume [Shift-P]")
        self.cancel_button = PushButton(text="Cancel propagation", enabled=False)
        self.next_button = PushButton(text="Next uncertain slice [Shift-N]")
        self.accept_button = PushButton(text="Accept slice [Shift-A]")
        self.undo_button = PushButton(text="Undo last box result")
        self.workdir = FileEdit(label="work folder", mode="d", value=str(Path.home() / "imedsam"))
        self.export_button = PushButton(text="Export accepted slices")
        self.epochs = SpinBox(label="epochs", value=30, min=1, max=2000)
        self.finetune_button = PushButton(text="Fine-tune on accepted slices")
        self.cancel_finetune_button = PushButton(text="Cancel fine-tuning", enabled=False)
        self.version_combo = ComboBox(label="adapter version", choices=["base"])
        self.status = Label(value="Load a model, pick an image, then draw a box.")
        self.controls = Container(widgets=[
            self.image_combo, self.model_combo, self.checkpoint, self.device_combo, self.adapters,
            self.load_button, self.window_combo, self.show_uncertainty, self.propagate_button,
            self.cancel_button, self.next_button, self.accept_button, self.undo_button, self.workdir,
            self.export_button, self.epochs, self.finetune_button, self.cancel_finetune_button, self.version_combo,
            self.status,
        ])
        self.status.native.setWordWrap(True)
        layout = QVBoxLayout()
        layout.addWidget(self.controls.native)
        layout.addStretch()
        self.setLayout(layout)

        self._debounce = QTimer(self)
        self._debounce.setSingleShot(True)
        self._debounce.setInterval(120)
        self._debounce.timeout.connect(self._run_pending_box)

        self.model_combo.changed.connect(lambda v: setattr(self.checkpoint, "visible", v == CHECKPOINT))
        self.load_button.clicked.connect(self.load_selected_model)
        self.image_combo.changed.connect(lambda _: self._reset_session())
        self.window_combo.changed.connect(lambda _: self._reset_session())
        self.show_uncertainty.changed.connect(self._toggle_uncertainty)
        self.propagate_button.clicked.connect(self.propagate)
        self.cancel_button.clicked.connect(self.cancel_propagation)
        self.next_button.clicked.connect(self.next_uncertain_slice)
        self.accept_button.clicked.connect(self.accept_slice)
        self.undo_button.clicked.connect(self.undo)
        self.export_button.clicked.connect(self.export_accepted)
        self.finetune_button.clicked.connect(self.fine_tune)
        self.cancel_finetune_button.clicked.connect(self.cancel_fine_tune)
        self.version_combo.changed.connect(self.use_version)
        self.viewer.dims.events.current_step.connect(self._on_slice_changed)
        for key, action in (("Shift-U", lambda v: self.show_uncertainty.set_value(not self.show_uncertainty.value)),
                            ("Shift-N", lambda v: self.next_uncertain_slice()),
                            ("Shift-A", lambda v: self.accept_slice()),
                            ("Shift-P", lambda v: self.propagate())):
            self.viewer.bind_key(key, action, overwrite=True)

    def reset_choices(self, event: Any = None) -> None:
        """napari calls this when layers change: refresh the image picker."""
        self.image_combo.reset_choices()

    # ---- model ------------------------------------------------------------------------------------
    def load_selected_model(self) -> None:
        choice = self.model_combo.value
        sources = {UNTRAINED_TINY: "tiny", CHECKPOINT: str(self.checkpoint.value)}
        source = sources.get(choice, choice)
        adapters = str(self.adapters.value) if self.adapters.value else None
        self._set_status(f"Loading {source}…")
        worker = create_worker(_guarded, self._load, source, self.device_combo.value, adapters,
                               _progress={"desc": f"Loading {source}"})
        worker.returned.connect(self._unless_failed(self.set_model))
        worker.start()

    @staticmethod
    def _load(source: str, device: str, adapters: str | None) -> LoadedModel:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return load_model(source, device=device, adapters=adapters)

    def set_model(self, loaded: LoadedModel) -> None:
        """Use an already loaded model (the widget's own Load button ends here too)."""
        self.model = loaded
        self.predictor = Predictor(loaded)
        self._versions = {"base": (self._trainables(loaded), loaded.adapter_version)}
        self.version_combo.choices = ["base"]
        if self.session is not None:
            self.session.predictor = self.predictor
        self._set_status(f"Model {loaded.model_id} ready on {loaded.device}. Draw a box on the image.")
        self._prefetch_embeddings()

    # ---- layers and session ------------------------------------------------------------------------
    @property
    def image_layer(self) -> Image | None:
        return self.image_combo.value

    def _spatial_shape(self, layer: Image) -> tuple[int, ...]:
        return layer.data.shape[:-1] if layer.rgb else layer.data.shape

    def _slice_axis(self, layer: Image) -> int | None:
        """Data axis the displayed slice is taken along (None for 2D images)."""
        if len(self._spatial_shape(layer)) == 2:
            return None
        offset = self.viewer.dims.ndim - layer.ndim
        hidden = [a - offset for a in self.viewer.dims.not_displayed if a - offset >= 0]
        return hidden[-1] if hidden else 0

    def current_slice(self) -> int | None:
        layer = self.image_layer
        axis = None if layer is None else self._slice_axis(layer)
        if axis is None:
            return None
        data_point = layer.world_to_data(self.viewer.dims.point)
        return int(np.clip(np.round(data_point[axis]), 0, layer.data.shape[axis] - 1))

    def _window(self, layer: Image) -> IntensityWindow | None:
        choice = self.window_combo.value
        if choice == "layer contrast limits":
            low, high = layer.contrast_limits
            return IntensityWindow("window", level=(low + high) / 2, width=max(high - low, 1e-6))
        if choice.startswith("CT "):
            return CT_PRESETS[choice[3:]]
        return MR_PERCENTILES if choice == "MR percentiles" else None

    def _layer(self, name: str, factory) -> Any:
        if name not in self.viewer.layers:
            self.viewer.add_layer(factory())
        return self.viewer.layers[name]

    def ensure_layers(self) -> tuple[Shapes, Labels, Image, Image]:
        layer = self.image_layer
        shape = self._spatial_shape(layer)
        place = {"scale": layer.scale[-len(shape):], "translate": layer.translate[-len(shape):]}
        labels = self._layer(LABELS, lambda: Labels(np.zeros(shape, np.int32), name=LABELS,
                                                      metadata={"affine": layer.metadata.get("affine"),
                                                                "imedsam_accepted": []}, **place))
        coarse = self._layer(COARSE, lambda: Image(np.zeros(shape, np.float32), name=COARSE, colormap="gray",
                                                   opacity=0.4, contrast_limits=(0, 1), visible=False, **place))
        uncertainty = self._layer(UNCERTAINTY, lambda: Image(np.zeros(shape, np.float32), name=UNCERTAINTY,
                                                             colormap="inferno", blending="additive", opacity=0.6,
                                                             contrast_limits=UNCERTAINTY_LIMITS, **place))
        boxes = self._layer(BOXES, lambda: Shapes(ndim=len(shape), name=BOXES, edge_color="lime",
                                                  face_color="transparent", edge_width=2, **place))
        if id(boxes) not in self._connected:
            boxes.mode = "add_rectangle"  # ready to draw
            boxes.events.data.connect(self._on_boxes_changed)
            labels.events.paint.connect(self._on_paint)
            self._connected.add(id(boxes))
        return boxes, labels, coarse, uncertainty

    def _reset_session(self) -> None:
        self.session = None
        self._session_key = None

    def ensure_session(self) -> AnnotationSession:
        layer = self.image_layer
        if layer is None:
            raise ValueError("no image layer: open an image first (File > Open Sample > I-MedSAM)")
        if self.predictor is None:
            raise ValueError("no model loaded: choose one and press 'Load model'")
        shape = self._spatial_shape(layer)
        if len(shape) not in (2, 3):
            raise ValueError(f"I-MedSAM segments 2D images and 3D volumes; this layer has shape {layer.data.shape}")
        _, labels, _, _ = self.ensure_layers()
        if labels.data.shape != shape:
            raise ValueError(f"'{LABELS}' has shape {labels.data.shape}, the image {shape}: rename or remove it")
        axis = self._slice_axis(layer)
        key = (id(layer), axis, self.window_combo.value, id(labels.data))
        if self.session is not None and self._session_key == key:
            self.session.predictor = self.predictor  # a model change keeps the annotation state
        else:
            edited = self._user_edited.setdefault(id(labels.data), np.zeros(shape, bool))
            move = (lambda a: a) if axis is None else (lambda a: np.moveaxis(a, axis, 0))
            image = np.asarray(layer.data) if axis is None else np.moveaxis(np.asarray(layer.data), axis, 0)
            self.session = AnnotationSession(self.predictor, image, move(labels.data), rgb=layer.rgb,
                                             window=self._window(layer), user_edited=move(edited))
            self.session.accepted = {z for a, z in labels.metadata.get("imedsam_accepted", []) if a == axis}
            self._session_key = key
        return self.session

    # ---- boxes -------------------------------------------------------------------------------------
    def _on_boxes_changed(self, event) -> None:
        if str(event.action) not in ("added", "changed") or not event.data_indices:  # not while dragging
            return
        boxes = self.viewer.layers[BOXES]
        index = int(event.data_indices[-1])
        if index < 0:
            index = len(boxes.data) + index
        self._ensure_box_label(boxes, index)
        self._pending_box = index
        self._debounce.start()

    def _ensure_box_label(self, boxes: Shapes, index: int) -> int:
        if "label" not in boxes.features:
            boxes.features["label"] = np.zeros(len(boxes.data), int)
        values = boxes.features["label"].to_numpy().copy()
        if values[index] < 1:
            labels = self.viewer.layers[LABELS]
            used = max(int(values.max(initial=0)), int(np.max(labels.data)) if labels.data.size else 0)
            values[index] = used + 1
            boxes.features["label"] = values
            labels.selected_label = int(values[index])  # corrections paint this object by default
        return int(values[index])

    def _box_of(self, boxes: Shapes, index: int) -> tuple[int | None, np.ndarray]:
        vertices = np.asarray(boxes.data[index])
        axis = self._slice_axis(self.image_layer)
        if axis is None:
            return None, box_from_corners_rc(vertices[:, -2:])
        z = int(np.round(vertices[0, axis]))
        in_plane = [a for a in range(vertices.shape[1]) if a != axis]
        return z, box_from_corners_rc(vertices[:, in_plane])

    def _run_pending_box(self) -> None:
        if self._pending_box is None:
            return
        if self._box_worker is not None:  # a result is being computed: run again when it lands
            return
        index, self._pending_box = self._pending_box, None
        try:
            session = self.ensure_session()
            boxes = self.viewer.layers[BOXES]
            slice_index, box = self._box_of(boxes, index)
            label = self._ensure_box_label(boxes, index)
        except (ValueError, IndexError) as exc:
            self._error(str(exc))
            return
        self._set_status(f"Segmenting object {label}…")
        self._box_worker = create_worker(_guarded, session.predict, slice_index, box, label)
        self._box_worker.returned.connect(self._unless_failed(self.show_result))
        self._box_worker.finished.connect(self._on_box_finished)
        self._box_worker.start()

    def _on_box_finished(self) -> None:
        self._box_worker = None
        if self._pending_box is not None:
            self._run_pending_box()

    def show_result(self, result: ObjectResult) -> None:
        """Apply a result to the labels and show its coarse probability and uncertainty."""
        self.session.apply(result)
        _, labels, coarse, uncertainty = self.ensure_layers()
        axis = self._slice_axis(self.image_layer)
        for layer, values in ((coarse, result.prediction.coarse_prob), (uncertainty, result.prediction.uncertainty)):
            target = layer.data if axis is None else np.moveaxis(layer.data, axis, 0)[result.slice_index]
            target[...] = values
            layer.refresh()
        labels.refresh()
        where = "" if result.slice_index is None else f" on slice {result.slice_index}"
        self._set_status(f"Object {result.label}{where}: {int(result.prediction.refined_mask.sum())} px, "
                         f"mean uncertainty {result.mean_uncertainty:.4f}. Correct with the label tools, then accept.")

    def _on_paint(self, event) -> None:
        """Remember what the user painted or erased: model results never overwrite it."""
        labels = self.viewer.layers[LABELS]
        edited = self._user_edited.setdefault(id(labels.data), np.zeros(labels.data.shape, bool))
        for atom in event.value:
            if hasattr(atom, "slice_key"):
                region = edited[atom.slice_key]
                if atom.mask is None:
                    region[...] = True
                else:
                    region[atom.mask] = True
            else:
                edited[atom[0]] = True

    # ---- review and volume actions -------------------------------------------------------------------
    def _toggle_uncertainty(self, visible: bool) -> None:
        if UNCERTAINTY in self.viewer.layers:
            self.viewer.layers[UNCERTAINTY].visible = visible

    def accept_slice(self) -> None:
        try:
            session = self.ensure_session()
            z = self.current_slice()
            session.accept(z)
        except ValueError as exc:
            self._error(str(exc))
            return
        labels = self.viewer.layers[LABELS]
        axis = self._slice_axis(self.image_layer)
        labels.metadata["imedsam_accepted"] = sorted({*map(tuple, labels.metadata.get("imedsam_accepted", [])),
                                                      (axis, z)}, key=str)
        accepted = sorted(s for s in session.accepted if s is not None)
        self._set_status("Slice accepted." if z is None else f"Accepted slices: {accepted}")

    def undo(self) -> None:
        try:
            self.ensure_session().undo()
        except ValueError as exc:
            self._error(str(exc))
            return
        self.viewer.layers[LABELS].refresh()
        self._set_status("Last box result undone.")

    def next_uncertain_slice(self) -> None:
        try:
            session = self.ensure_session()
        except ValueError as exc:
            self._error(str(exc))
            return
        z = session.next_uncertain_slice(self.current_slice())
        if z is None:
            show_info("No unreviewed results: every segmented slice is accepted.")
            return
        self.go_to_slice(z)
        self._set_status(f"Slice {z}: the most uncertain unaccepted result. Review, correct, accept.")

    def go_to_slice(self, z: int) -> None:
        layer = self.image_layer
        axis = self._slice_axis(layer)
        if axis is None:
            return
        point = np.zeros(layer.ndim)
        point[axis] = z
        world = layer.data_to_world(point)
        offset = self.viewer.dims.ndim - layer.ndim
        self.viewer.dims.set_point(axis + offset, world[axis])

    def propagate(self) -> None:
        try:
            session = self.ensure_session()
            z = self.current_slice()
            if not session.is_volume:
                raise ValueError("propagation needs a 3D volume")
            label = self.viewer.layers[LABELS].selected_label
            if (z, label) not in session.results:
                raise ValueError(f"no box result for object {label} on slice {z}: draw a box first")
        except ValueError as exc:
            self._error(str(exc))
            return

        def run():
            for direction in (1, -1):
                yield from session.propagate(z, label, direction)

        self._propagation = create_worker(run, _progress={"total": session.n_slices, "desc": "Propagating"})
        self._propagation.yielded.connect(self.show_result)
        self._propagation.errored.connect(lambda exc: self._error(str(exc)))
        self._propagation.finished.connect(self._on_propagation_finished)
        self.cancel_button.enabled = True
        self._set_status(f"Propagating object {label} from slice {z}…")
        self._propagation.start()

    def _on_propagation_finished(self) -> None:
        self.cancel_button.enabled = False
        self._propagation = None
        done = sorted(z for (z, _) in (self.session.results if self.session else {}) if z is not None)
        self._set_status(f"Propagation finished: results on slices {done[:1] + ['…'] + done[-1:] if done else []}. "
                         "Use 'Next uncertain slice' to review.")

    def cancel_propagation(self) -> None:
        if self._propagation is not None:
            self._propagation.quit()

    # ---- background embedding ----------------------------------------------------------------------
    def _on_slice_changed(self, event=None) -> None:
        self._prefetch_embeddings()

    def _prefetch_embeddings(self) -> None:
        """Embed the current slice, then its neighbours, in the background."""
        try:
            session = self.ensure_session()
        except ValueError:
            return
        z = self.current_slice()
        order = [z] if z is None else [s for s in (z, z + 1, z - 1) if 0 <= s < session.n_slices]
        if self._prefetch is not None:
            self._prefetch.quit()

        def run():
            for s in order:
                _guarded(session.embed, s)
                yield s

        worker = create_worker(run)
        worker.finished.connect(lambda: self._prefetch is worker and setattr(self, "_prefetch", None))
        self._prefetch = worker
        worker.start()

    # ---- export and fine-tuning ----------------------------------------------------------------------
    def export_dir(self) -> Path:
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", self.image_layer.name) if self.image_layer is not None else "image"
        return Path(self.workdir.value) / "exports" / name

    def export_accepted(self) -> list[str]:
        """Append the accepted slices not exported yet to the work folder's export (nnU-Net layout)."""
        try:
            session = self.ensure_session()
            layer = self.image_layer
            axis = self._slice_axis(layer)
            in_plane = [a for a in range(len(self._spatial_shape(layer))) if a != axis]
            spacing = tuple(float(layer.scale[a]) for a in in_plane[-2:])
            source = str(layer.source.path or layer.metadata.get("source_path") or layer.name)
            items = session.pending_exports(source=source, axis=axis, spacing=spacing)
            if not items:
                raise ValueError("no new accepted slices to export: accept corrected slices first")
            cases = export_slices(self.export_dir(), items)
        except (ValueError, OSError) as exc:
            self._error(str(exc))
            return []
        session.mark_exported(items)
        self._set_status(f"Exported {len(cases)} slice(s) to {self.export_dir()}")
        return cases

    @staticmethod
    def _trainables(loaded: LoadedModel) -> dict:
        return {k: v.clone() for k, v in trainable_state(loaded.network).items()}

    def fine_tune(self) -> None:
        """Export what is new, then train a copy of the model in a worker; load the result when done."""
        from src_train.data import load_export
        from src_train.trainer import TrainOptions, train

        if self._finetune is not None:
            self._error("fine-tuning is already running")
            return
        try:
            session = self.ensure_session()
            if session.accepted - session.exported:
                if not self.export_accepted():
                    return
            samples = load_export(self.export_dir()) if self.export_dir().exists() else []
            if len(samples) < 2:
                raise ValueError("fine-tuning needs at least 2 accepted objects (one is held back to measure Dice)")
        except (ValueError, OSError) as exc:
            self._error(str(exc))
            return
        mode = "decoder" if self.model.device.type == "cpu" else "adapters"
        if mode == "decoder":
            show_info("No GPU: fine-tuning the decoder only (prompt encoder, upscaling, INRs); "
                      "the encoder stays frozen.")
        candidate = copy.deepcopy(self.model)
        options = TrainOptions(mode=mode, epochs=int(self.epochs.value), seed=0)
        signal = _EpochSignal()
        signal.epoch.connect(self._on_epoch)
        self._finetune_cancelled = False
        self._finetune_progress = progress(total=options.epochs, desc="Fine-tuning")
        name = self.export_dir().name
        self._finetune = create_worker(_guarded, train, candidate, samples, options, self.workdir.value, name,
                                       signal.epoch.emit, lambda: self._finetune_cancelled)
        self._finetune.returned.connect(self._unless_failed(lambda report: self._on_finetuned(report, candidate)))
        self._finetune.finished.connect(self._on_finetune_finished)
        self._finetune_signal = signal  # keep the QObject alive while the worker runs
        self.cancel_finetune_button.enabled = True
        self._set_status(f"Fine-tuning ({mode} mode) on {len(samples)} accepted objects…")
        self._finetune.start()

    def _on_epoch(self, record: dict) -> None:
        if self._finetune_progress is not None:
            self._finetune_progress.set_description(
                f"Fine-tuning: epoch {record['epoch']}, loss {record['loss']:.3f}, val Dice {record['val_dice']:.3f}")
            self._finetune_progress.update(1)
        self._set_status(f"Epoch {record['epoch']}: loss {record['loss']:.3f}, "
                         f"Dice on held-back slices {record['val_dice']:.3f}")

    def cancel_fine_tune(self) -> None:
        self._finetune_cancelled = True  # the trainer stops after the current epoch and keeps the best so far

    def _on_finetuned(self, report, candidate: LoadedModel) -> None:
        self.last_report = report
        version = f"{report.version_path.parent.name}/{report.version_path.stem}"
        self._versions[version] = (self._trainables(candidate), str(report.version_path))
        self.version_combo.choices = list(self._versions)
        self.version_combo.value = version  # loads it (see use_version)
        message = (f"Dice on held-back accepted slices: before {report.before.get('dice', float('nan')):.3f} -> "
                   f"after {report.after.get('dice', float('nan')):.3f}. Loaded {version}"
                   + (" (cancelled early)" if report.cancelled else ""))
        show_info(message)
        self._set_status(message)

    def _on_finetune_finished(self) -> None:
        if self._finetune_progress is not None:
            self._finetune_progress.close()
        self._finetune_progress = None
        self._finetune = None
        self.cancel_finetune_button.enabled = False

    def use_version(self, version: str) -> None:
        """Switch the live model to an adapter version (`base` restores the weights before fine-tuning)."""
        if self.model is None or version not in self._versions:
            return
        state, version_id = self._versions[version]
        self.model.network.load_state_dict(state, strict=False)
        self.model.adapter_version = version_id  # new embedding cache key: nothing stale is reused
        self._set_status(f"Using adapter version {version}.")

    # ---- messages ------------------------------------------------------------------------------------
    def _set_status(self, text: str) -> None:
        self.status.value = text

    def _unless_failed(self, handler):
        """A slot for a `_guarded` worker's result: one notification for a failure, else `handler(result)`."""
        def slot(result) -> None:
            if isinstance(result, _Failure):
                self._error(result.message)
            else:
                handler(result)
        return slot

    def _error(self, message: str) -> None:
        self._set_status(f"Error: {message}")
        show_error(message)

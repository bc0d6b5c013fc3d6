"""The dock's controls: built here, wired in `dock.py`. Feedback (the status line) sits on top,
always visible; the rest scrolls on a small screen."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    Label,
    ProgressBar,
    PushButton,
    SpinBox,
    create_widget,
)
from napari.layers import Image
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QFrame, QLabel, QScrollArea, QSizePolicy, QVBoxLayout

from ..inference.windows import CT_PRESETS
from . import actions
from .layers import annotatable_images

if TYPE_CHECKING:
    from .dock import IMedSAMWidget

AS_DISPLAYED = "as displayed (contrast limits)"
WINDOWS = [AS_DISPLAYED, "auto (percentiles)", *(f"CT {name}" for name in CT_PRESETS), "MR percentiles"]
UNTRAINED_TINY, CHECKPOINT = "tiny (untrained, for testing)", "checkpoint file…"


def model_choices() -> list[str]:
    from ..model.catalog import MODEL_NAMES  # torch-free list of registry names

    return [*MODEL_NAMES, UNTRAINED_TINY, CHECKPOINT]


def version_choices(versions) -> list[tuple[str, str]]:
    """(shown, value) for the adapter-version list: the version first ("v002 · ct_abdomen-1a2b3c4d"), so a
    narrow dock cuts the export name, never the version."""
    return [(version if "/" not in version else " · ".join(reversed(version.rsplit("/", 1))), version)
            for version in versions]


def build(self: IMedSAMWidget) -> None:
    """Create the dock's controls as attributes of the dock and lay them out."""
    key = actions.shortcut
    self.image_combo = create_widget(annotation=Image, label="image",  # not the plugin's own maps
                                     options={"choices": lambda _: annotatable_images(self.viewer)})
    self.model_combo = ComboBox(label="model", choices=model_choices())
    self.checkpoint = FileEdit(label="checkpoint", filter="*.pth *.pt *.safetensors", visible=False)
    self.device_combo = ComboBox(label="device", choices=["auto", "cpu", "cuda", "mps"])
    self.adapters = FileEdit(label="adapters", filter="*.safetensors", nullable=True, value=None)
    self.corrector_file = FileEdit(label="corrector", filter="*.safetensors", nullable=True, value=None)
    self.refiner_file = FileEdit(label="click refiner", filter="*.safetensors", nullable=True, value=None,
                                 tooltip="a click refiner you trained (imedsam train --mode clicks); empty: the "
                                         "one bundled with the model, if any")
    self.load_button = PushButton(text="Load model")
    self.window_combo = ComboBox(label="intensity", choices=WINDOWS)
    self.show_uncertainty = CheckBox(text=f"Show uncertainty [{key('napari-imedsam:toggle_uncertainty')}]",
                                     value=True)
    self.mirror = CheckBox(text="Mirror averaging (4x slower)", value=False,
                           tooltip="each box also on the image's three mirror images, averaged: higher Dice, "
                                   "a sharper uncertainty ranking (see the README)")
    self.continue_object = CheckBox(text="New box continues the selected object", value=False,
                                    tooltip="on a slice where the selected object has no box yet, a new box is "
                                            "that object (one label per structure across slices), not a new one")
    self.propagate_button = PushButton(text=f"Propagate through volume [{key('napari-imedsam:propagate')}]")
    self.cancel_button = PushButton(text="Cancel propagation", enabled=False)
    self.next_button = PushButton(text=f"Next uncertain slice [{key('napari-imedsam:next_uncertain_slice')}]")
    self.accept_button = PushButton(text=f"Accept slice [{key('napari-imedsam:accept_slice')}]")
    self.undo_button = PushButton(text=f"Undo last result [{key('napari-imedsam:undo')}]")
    self.positive_button = PushButton(text=f"+ [{key('napari-imedsam:positive_clicks')}]",
                                      tooltip="positive clicks: where the mask misses the object")
    self.negative_button = PushButton(text=f"\u2212 [{key('napari-imedsam:negative_clicks')}]",
                                      tooltip="negative clicks: where the mask covers too much")
    self.boxes_button = PushButton(text=f"boxes [{key('napari-imedsam:draw_boxes')}]",
                                   tooltip="back to drawing boxes (every box is a new object)")
    self.suggestion_button = PushButton(
        text=f"Accept suggestion under cursor [{key('napari-imedsam:accept_suggestion')}]")
    self.all_suggestions_button = PushButton(
        text=f"Accept all suggestions [{key('napari-imedsam:accept_all_suggestions')}]")
    self.dismiss_button = PushButton(text=f"Dismiss suggestions [{key('napari-imedsam:dismiss_suggestions')}]")
    self.workdir = FileEdit(label="work folder", mode="d", value=str(Path.home() / "imedsam"))
    self.export_button = PushButton(text="Export accepted slices")
    self.steps = SpinBox(label="training steps", value=200, min=10, max=20000, step=10)
    self.finetune_button = PushButton(text="Fine-tune on accepted slices")
    self.cancel_finetune_button = PushButton(text="Cancel fine-tuning", enabled=False)
    self.progress = ProgressBar(label="progress", value=0, max=1, visible=False)
    self.version_combo = ComboBox(label="adapter version", choices=version_choices(["base"]))
    self.status = QLabel("Pick an image and a model, press Load model, then draw a box.")
    self.status.setWordWrap(True)
    self.status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
    self.status.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Minimum)
    self.status.setMinimumHeight(4 * self.status.fontMetrics().lineSpacing())
    self.controls = Container(widgets=[
        self.image_combo, self.model_combo, self.checkpoint, self.device_combo, self.adapters, self.corrector_file,
        self.refiner_file, self.load_button, self.window_combo, self.show_uncertainty, self.mirror,
        self.continue_object,
        Container(widgets=[self.positive_button, self.negative_button, self.boxes_button], layout="horizontal",
                  label="clicks"),
        self.undo_button, self.suggestion_button,
        self.all_suggestions_button, self.dismiss_button, self.accept_button, self.next_button,
        self.propagate_button, self.cancel_button, Label(value="<b>Fine-tuning</b>"), self.workdir,
        self.export_button, self.steps, self.finetune_button, self.cancel_finetune_button, self.progress,
        self.version_combo,
    ])
    scroll = QScrollArea()  # the dock stays usable on a small screen
    scroll.setWidgetResizable(True)
    scroll.setFrameShape(QFrame.Shape.NoFrame)
    scroll.setWidget(self.controls.native)
    scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
    layout = QVBoxLayout()
    layout.addWidget(self.status)  # feedback first, always visible
    layout.addWidget(scroll)
    self.setLayout(layout)
    # wide enough for every control: napari sizes the dock from this, nothing is cut off
    margins = layout.contentsMargins()
    self.setMinimumWidth(self.controls.native.minimumSizeHint().width() + scroll.verticalScrollBar().sizeHint().width()
                         + margins.left() + margins.right() + 4)

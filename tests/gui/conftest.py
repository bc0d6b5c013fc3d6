"""GUI fixtures: a shown napari viewer with the dock opened through the plugin manifest, and the
bundled demo model (small and real: the user's own default path apart from the backbone)."""

from __future__ import annotations

import numpy as np
import pytest
from qtpy.QtWidgets import QApplication

from napari_imedsam.model.registry import load_model


@pytest.fixture(scope="session")
def demo_model():
    return load_model("demo")


@pytest.fixture
def docked(make_napari_viewer, demo_model):
    """(viewer, dock) with the dock opened as the Plugins menu does, the demo model set."""
    viewer = make_napari_viewer(show=True)
    _, dock = viewer.window.add_plugin_dock_widget("napari-imedsam", "I-MedSAM annotator")
    dock.set_model(demo_model)
    return viewer, dock


def open_image(viewer, dock, data, name="image", **kwargs):
    """Add an image as a user would (or a sample), pick it in the dock, create the I-MedSAM layers,
    fit the view, and leave the boxes layer selected in rectangle mode."""
    layer = viewer.add_image(data, name=name, **kwargs) if data is not None else viewer.layers[name]
    dock.reset_choices()
    dock.image_combo.value = layer
    dock.ensure_layers()
    boxes, labels = viewer.layers["I-MedSAM boxes"], viewer.layers["I-MedSAM labels"]  # not the dock's proxies
    viewer.reset_view()
    select(viewer, boxes)
    boxes.mode = "add_rectangle"
    QApplication.processEvents()
    return layer, boxes, labels


def select(viewer, layer) -> None:
    viewer.layers.selection.active = layer
    QApplication.processEvents()


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / max(1, a.sum() + b.sum()))


def thorax_dock_with_demo_chosen(make_napari_viewer):
    """A shown viewer with the CT thorax sample, the dock opened as the Plugins menu does, the image and
    `demo` chosen in it, the Load button not yet pressed: (viewer, dock)."""
    viewer = make_napari_viewer(show=True)
    viewer.open_sample("napari-imedsam", "ct_thorax")
    _, dock = viewer.window.add_plugin_dock_widget("napari-imedsam", "I-MedSAM annotator")
    dock.reset_choices()
    dock.image_combo.value = viewer.layers["CT thorax"]
    dock.model_combo.value = "demo"
    return viewer, dock


def press_load(dock) -> None:
    """Click Load model and let the event loop run until the dock says the model is ready, or an error."""
    dock.load_button.native.click()
    dock.wait_until_idle()  # the worker is done; the layers come in the next turns
    for _ in range(200):
        if "ready" in dock.status_text() or "Error" in dock.status_text():
            break
        QApplication.processEvents()

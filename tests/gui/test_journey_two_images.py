"""Two images in one viewer: each gets its own I-MedSAM layers, and the dock follows the one in use."""

from __future__ import annotations

import numpy as np
import pytest

from napari_imedsam.inference.boxes import box_of_mask
from napari_imedsam.widgets.layers import BOXES, LABELS

from .conftest import dice, open_image, select
from .user import drag_box

pytestmark = pytest.mark.gui


def structure(viewer, title: str, name: str) -> np.ndarray:
    truth = viewer.layers[f"{title} expert masks"]
    values = {n: v for v, n in truth.metadata["structures"].items()}
    return truth.data == values[name]


def drag_around(viewer, dock, image, boxes, mask) -> None:
    select(viewer, boxes)
    boxes.mode = "add_rectangle"
    x0, y0, x1, y1 = box_of_mask(mask)
    drag_box(viewer, image, (y0, x0), (y1, x1))
    dock.wait_until_idle()


def test_a_second_image_gets_its_own_layers_and_the_first_keeps_its_work(docked):
    viewer, dock = docked
    errors = []
    dock.error = errors.append
    viewer.open_sample("napari-imedsam", "ct_thorax")
    thorax, boxes1, labels1 = open_image(viewer, dock, None, "CT thorax")
    aorta = structure(viewer, "CT thorax", "aorta_000")
    drag_around(viewer, dock, thorax, boxes1, aorta)
    assert dice(labels1.data == 1, aorta) > 0.7
    first = labels1.data.copy()

    viewer.open_sample("napari-imedsam", "ct_pelvis")
    dock.reset_choices()
    assert "I-MedSAM uncertainty" not in [layer.name for layer in dock.image_combo.choices]  # the maps are no images
    dock.image_combo.value = viewer.layers["CT pelvis"]  # the user picks the second image in the dock
    dock.wait_until_idle()
    assert not errors, errors
    assert "Annotating 'CT pelvis'" in dock.status_text()
    extent = np.asarray(viewer.layers["CT pelvis"].extent.world)[:, -2:]  # the view fits the pelvis, not the
    np.testing.assert_allclose(viewer.scene.camera.center[-2:], extent.mean(axis=0), atol=2.0)  # hidden thorax too
    assert not viewer.layers["CT thorax"].visible and not labels1.visible and not boxes1.visible  # set aside
    boxes2, labels2 = viewer.layers[f"{BOXES} (CT pelvis)"], viewer.layers[f"{LABELS} (CT pelvis)"]
    assert labels2.data.shape == viewer.layers["CT pelvis"].data.shape and not labels2.data.any()
    names = list(viewer.layers["CT pelvis expert masks"].metadata["structures"].values())
    target = max((structure(viewer, "CT pelvis", n) for n in names), key=np.count_nonzero)
    pelvis = viewer.layers["CT pelvis"]
    drag_around(viewer, dock, pelvis, boxes2, target)
    assert not errors, errors
    assert dice(labels2.data == 1, target) > 0.5  # its own object 1
    assert np.array_equal(labels1.data, first)  # the first image's work is untouched

    # back to the first image by drawing on its boxes layer: the dock follows (and shows it), object 2 lands there
    ventricle = structure(viewer, "CT thorax", "heart_ventricle_left_000")
    drag_around(viewer, dock, thorax, boxes1, ventricle)
    assert not errors, errors
    assert dock.image_layer().name == "CT thorax"
    assert viewer.layers["CT thorax"].visible and labels1.visible and not pelvis.visible and not labels2.visible
    assert dice(labels1.data == 2, ventricle) > 0.5 and np.array_equal(labels1.data == 1, first == 1)
    assert set(np.unique(labels2.data)) == {0, 1}

    # a 3D volume next to the 2D slices: picked in the list, it gets 3D layers of its own
    viewer.open_sample("napari-imedsam", "phantom_3d")
    dock.reset_choices()
    dock.image_combo.value = viewer.layers["phantom CT (HU)"]
    dock.wait_until_idle()
    assert not errors, errors
    assert viewer.layers[f"{LABELS} (phantom CT (HU))"].data.shape == viewer.layers["phantom CT (HU)"].data.shape
    dock.image_combo.value = thorax  # and back to a 2D slice
    assert not errors and "Annotating 'CT thorax'" in dock.status_text()


def test_a_reopened_dock_comes_back_to_the_image_and_handles_every_images_boxes(docked):
    """Work on the second image, switch the dock to the first, close the dock, reopen it, and draw on the
    second image's boxes layer (still the selected layer: no selection event): the box is segmented and
    reported by the reopened dock, which comes back on the image worked on last."""
    viewer, dock = docked
    viewer.open_sample("napari-imedsam", "ct_thorax")
    thorax, _, _ = open_image(viewer, dock, None, "CT thorax")
    viewer.open_sample("napari-imedsam", "ct_pelvis")
    dock.reset_choices()
    dock.image_combo.value = viewer.layers["CT pelvis"]
    pelvis = viewer.layers["CT pelvis"]
    boxes2, labels2 = viewer.layers[f"{BOXES} (CT pelvis)"], viewer.layers[f"{LABELS} (CT pelvis)"]
    names = list(viewer.layers["CT pelvis expert masks"].metadata["structures"].values())
    masks = sorted((structure(viewer, "CT pelvis", n) for n in names), key=np.count_nonzero)[::-1]
    drag_around(viewer, dock, pelvis, boxes2, masks[0])
    dock.image_combo.value = thorax  # the user looks at the other image in the dock, then closes it
    viewer.window.remove_dock_widget(dock)
    _, again = viewer.window.add_plugin_dock_widget("napari-imedsam", "I-MedSAM annotator")
    dock.wait_until_idle()
    for _ in range(3):
        from qtpy.QtWidgets import QApplication
        QApplication.processEvents()
    assert again.image_layer().name == "CT thorax"  # where the dock was
    assert viewer.layers.selection.active is boxes2
    for layer in (pelvis, labels2, boxes2):  # the user shows the pelvis again (eye icons), draws on its boxes
        layer.visible = True
    viewer.layers["CT thorax"].visible = False
    x0, y0, x1, y1 = box_of_mask(masks[1])
    drag_box(viewer, pelvis, (y0, x0), (y1, x1))
    again.wait_until_idle()
    assert "Object 2" in again.status_text() and (labels2.data == 2).any(), again.status_text()
    assert again.image_layer().name == "CT pelvis"  # the dock followed the boxes layer drawn on

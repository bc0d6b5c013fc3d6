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

"""The corrector's suggestions in the dock: shown as blue (remove) / green (add) regions, accepted under
the mouse cursor with a key, all at once, or dismissed; accepted ones are the user's edits and undo."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_imedsam.model.corrector import CorrectorConfig, DualFalseCorrector
from napari_imedsam.widgets.corrections import SUGGESTIONS

from .test_journey_2d import draw, thorax
from .user import move_mouse, press_key, to_canvas

pytestmark = pytest.mark.gui


def eager_corrector() -> DualFalseCorrector:
    """A corrector that flips every suspicious pixel: deterministic suggestions on any image."""
    corrector = DualFalseCorrector(CorrectorConfig(size=64)).eval()
    with torch.no_grad():  # both heads: the output convolution's two channels (weights start at zero)
        corrector.out.bias.fill_(10.0)
    return corrector


def test_suggestions_accept_under_cursor_all_dismiss_and_undo(docked):
    viewer, dock = docked
    image, boxes, labels, truth, names = thorax(viewer, dock)
    draw(viewer, dock, image, truth == 1)
    for key in ("Shift-S", "Shift-D", "Shift-X"):  # a model without a corrector says so (not "0 dismissed")
        press_key(viewer, key)
        assert "has no corrector, so it makes no suggestions" in dock.status_text(), (key, dock.status_text())
    dock.undo()
    dock.set_model(dock.state.model, eager_corrector())
    heart = truth == names["heart_ventricle_left_000"]
    label = draw(viewer, dock, image, heart)
    assert label == 1
    layer = viewer.layers[SUGGESTIONS]
    shown = layer.data.copy()
    assert (shown == 1).any() and (shown == 2).any(), "suggestions drawn as remove (1) and add (2)"
    assert "Suggestions: blue = remove, green = add" in dock.status_text()
    order = [lay.name for lay in viewer.layers]
    assert order.index(SUGGESTIONS) > order.index("I-MedSAM labels")

    rows, cols = np.nonzero(shown == 2)  # point at an "add" region and press the key
    target = (rows[len(rows) // 2], cols[len(cols) // 2])
    move_mouse(viewer, to_canvas(viewer, image, target))
    before = labels.data.copy()
    press_key(viewer, "Shift-S")
    added = (labels.data == label) & (before != label)
    assert added[target] and "added to object" in dock.status_text()
    assert dock.session().user_edited[added].all()
    assert layer.data[target] == 0  # the accepted region is no longer suggested

    dock.undo()  # one undo step takes it back
    np.testing.assert_array_equal(labels.data, before)
    assert dock.status_text().startswith(f"Undone: accepted suggestion(s) of object {label}."), dock.status_text()

    dock.all_suggestions_button.clicked()
    assert not layer.data.any() and "accepted" in dock.status_text()
    draw(viewer, dock, image, truth == names["aorta_000"])
    assert layer.data.any()
    press_key(viewer, "Shift-X")
    assert not layer.data.any() and "dismissed" in dock.status_text()


def test_the_bundled_corrector_from_the_load_button_helps_and_steps_aside_for_clicks(make_napari_viewer):
    """What a `demo` user meets: Load model brings the bundled corrector; a mouse-drawn box on the left
    ventricle gets suggestions; Shift-D accepts them all and the mask gets closer to the expert's;
    Shift-Z takes them back; a click on the object leaves it without suggestions."""
    from napari_imedsam.evaluation import next_click

    from .conftest import dice, open_image, press_load, thorax_dock_with_demo_chosen
    from .user import click

    viewer, dock = thorax_dock_with_demo_chosen(make_napari_viewer)
    press_load(dock)
    assert dock.state.corrector is not None and dock.state.corrector.header["helps"]
    image, _, labels = open_image(viewer, dock, None, "CT thorax")  # the view fitted, boxes selected
    truth = viewer.layers["CT thorax expert masks"]
    names = {n: v for v, n in truth.metadata["structures"].items()}
    heart = truth.data == names["heart_ventricle_left_000"]
    label = draw(viewer, dock, image, heart)
    layer = viewer.layers[SUGGESTIONS]
    assert layer.data.any() and "Suggestions" in dock.status_text()
    before = labels.data.copy()
    press_key(viewer, "Shift-D")
    after = dice(labels.data == label, heart)
    print(f"left ventricle: Dice {dice(before == label, heart):.3f} -> {after:.3f} after accepting all suggestions")
    assert after > dice(before == label, heart) and not layer.data.any()
    press_key(viewer, "Shift-Z")
    np.testing.assert_array_equal(labels.data, before)

    aorta = draw(viewer, dock, image, truth.data == names["aorta_000"])  # a box the corrector leaves alone
    assert not (layer.data > 0)[labels.data == aorta].any()
    assert f"The corrector suggests no change to object {aorta}" in dock.status_text()
    dock.undo()
    assert labels.selected_label == label  # the undone object is gone: clicks go to the ventricle again

    row, col, positive = next_click(labels.data == label, heart)
    press_key(viewer, "Shift-C" if positive else "Shift-E")
    click(viewer, image, (row, col))
    dock.wait_until_idle()
    assert not (layer.data > 0)[heart].any()  # the clicked object has no suggestions, and the status does not offer any
    assert "blue = remove" not in dock.status_text() or "for other objects" in dock.status_text(), dock.status_text()
    assert dock.session().results[(None, label)].remove is None

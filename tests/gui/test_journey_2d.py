"""A person's path through the dock on a 2D CT slice: mouse-drawn boxes, napari's own brush, keys.

Everything goes through the real canvas (mouse press / move / release on the Qt widget) and the
dock's buttons; assertions are on what the user sees: the labels written, their Dice against the
expert masks, the heatmap, the status line.
"""

from __future__ import annotations

import numpy as np
import pytest

from napari_imedsam.inference.boxes import box_of_mask
from napari_imedsam.widgets.layers import LABELS, UNCERTAINTY

from .conftest import dice, open_image, press_load, select, thorax_dock_with_demo_chosen
from .user import drag_box, press_key, stroke

pytestmark = pytest.mark.gui
STRUCTURES = ("aorta_000", "heart_ventricle_left_000", "vertebrae_T9_000")


def thorax(viewer, dock):
    viewer.open_sample("napari-imedsam", "ct_thorax")
    image, boxes, labels = open_image(viewer, dock, None, "CT thorax")
    truth = viewer.layers["CT thorax expert masks"]
    names = {n: v for v, n in truth.metadata["structures"].items()}
    return image, boxes, labels, truth.data, names


def draw(viewer, dock, image, mask) -> int:
    """Drag a box around `mask` with the mouse; wait for the result; return the new object's number."""
    boxes = viewer.layers["I-MedSAM boxes"]
    n = len(boxes.data)
    x0, y0, x1, y1 = box_of_mask(mask)
    drag_box(viewer, image, (y0, x0), (y1, x1))
    dock.wait_until_idle()
    assert len(boxes.data) == n + 1, "the drag did not draw a box"
    return int(boxes.features["label"].iloc[-1])


def test_three_objects_in_a_row_then_paint_undo_and_accept(docked):
    viewer, dock = docked
    image, boxes, labels, truth, names = thorax(viewer, dock)
    scores = {}
    for number, structure in enumerate(STRUCTURES, start=1):
        mask = truth == names[structure]
        label = draw(viewer, dock, image, mask)
        assert label == number  # every box is its own object
        written = int((labels.data == label).sum())
        assert f"Object {label}: {written} px written" in dock.status_text()  # what was written, not predicted
        scores[structure] = dice(labels.data == label, mask)
        # the heatmap covers every object drawn so far, and the mask stays on top of it
        x0, y0, x1, y1 = box_of_mask(mask).astype(int)
        assert viewer.layers[UNCERTAINTY].data[y0:y1 + 1, x0:x1 + 1].max() > 0.01
    print("Dice per structure (mouse-drawn boxes, demo model):", {k: round(v, 3) for k, v in scores.items()})
    assert min(scores.values()) > 0.5 and np.mean(list(scores.values())) > 0.75
    assert list(boxes.features["label"]) == [1, 2, 3] and boxes.text.string.format == "{label}"
    first = box_of_mask(truth == names[STRUCTURES[0]]).astype(int)
    assert viewer.layers[UNCERTAINTY].data[first[1]:first[3] + 1, first[0]:first[2] + 1].max() > 0.01
    order = [layer.name for layer in viewer.layers]
    assert order.index(LABELS) > order.index(UNCERTAINTY)
    assert viewer.layers[UNCERTAINTY].colormap.map(np.array([0.0]))[0, 3] == 0  # transparent where sure

    # correct object 2 with napari's brush: a stroke beside the ventricle
    heart = truth == names["heart_ventricle_left_000"]
    x0, y0, x1, y1 = box_of_mask(heart)
    select(viewer, labels)
    labels.mode, labels.brush_size, labels.selected_label = "paint", 5, 2
    row = y0 - 6
    stroke(viewer, image, [(row, c) for c in np.linspace(x0, x1, 12)])
    painted = labels.data == 2
    assert painted[int(row), int((x0 + x1) / 2)], "the brush stroke did not land"
    before_box = labels.data.copy()

    # another box over the painted stroke: the correction survives
    select(viewer, boxes)
    boxes.mode = "add_rectangle"
    label = draw(viewer, dock, image, heart | (np.arange(heart.shape[0])[:, None] < y0 + 4)
                 & (np.arange(heart.shape[0])[:, None] > row - 10) & heart.any(axis=0)[None, :])
    assert label == 4
    assert (labels.data[int(row), int(x0):int(x1)] == 2).all()

    # Undo takes back object 4's result, its box and its heatmap; the stroke stays
    dock.undo_button.clicked()
    assert len(boxes.data) == 3 and 4 not in set(boxes.features["label"])
    np.testing.assert_array_equal(labels.data, before_box)

    # accept with the key, on the canvas
    press_key(viewer, "Shift-Y")
    assert None in dock.session().accepted


def test_non_rectangles_thin_boxes_and_nothing_to_undo(docked, monkeypatch):
    viewer, dock = docked
    infos, errors = [], []
    monkeypatch.setattr("napari_imedsam.widgets.prompts.show_info", infos.append)
    monkeypatch.setattr("napari_imedsam.widgets.dock.show_info", infos.append)
    monkeypatch.setattr("napari_imedsam.widgets.dock.show_error", errors.append)
    image, boxes, labels, truth, names = thorax(viewer, dock)
    dock.undo()
    assert infos == ["nothing to undo"] and not errors  # not an error
    assert dock.status_text() == "Nothing to undo."
    aorta = truth == names["aorta_000"]
    x0, y0, x1, y1 = box_of_mask(aorta)
    boxes.add_ellipses(np.array([[(y0 + y1) / 2, (x0 + x1) / 2], [(y1 - y0) / 2 + 1, (x1 - x0) / 2 + 1]]))
    dock.wait_until_idle()
    assert any("ellipse" in m and "bounding box" in m for m in infos)
    assert dice(labels.data == 1, aorta) > 0.7
    boxes.add_rectangles(np.array([[100.0, 100.0], [140.0, 100.5]]))  # half a pixel wide
    dock.wait_until_idle()
    assert len(errors) == 1 and "at least 2 pixels" in errors[0] and "The box was removed" in errors[0]
    assert "Segmenting" not in dock.status_text()
    assert len(boxes.data) == 1  # the layer is as it was before the mistake
    boxes.add_rectangles(np.array([[-60.0, -80.0], [-5.0, -10.0]]))  # wholly outside the image
    dock.wait_until_idle()
    assert len(errors) == 2 and errors[1].startswith("object 2: box lies outside the 258x181"), errors[1]
    assert "-80,-60,-10,-5" in errors[1] and len(boxes.data) == 1
    boxes.add_rectangles(np.array([[y0, x0], [y1, x1]]))  # the next box still works, and takes the free number
    dock.wait_until_idle()
    assert (labels.data == 2).any() and len(boxes.data) == 2
    data = list(boxes.data)  # the user moves object 2's box off the image: it goes back, the mask stays
    data[1] = data[1] - [600.0, 600.0]
    before = labels.data.copy()
    boxes.data = data
    dock.wait_until_idle()
    assert len(errors) == 3 and "went back to where it was" in errors[2], errors
    back, moved = np.asarray(boxes.data[1]), data[1] + [600.0, 600.0]
    np.testing.assert_allclose([back.min(0), back.max(0)], [moved.min(0), moved.max(0)], atol=0.5)
    np.testing.assert_array_equal(labels.data, before)


def test_errors_are_one_clear_message(make_napari_viewer, monkeypatch, tmp_path):
    viewer = make_napari_viewer(show=True)
    errors = []
    monkeypatch.setattr("napari_imedsam.widgets.dock.show_error", errors.append)
    _, dock = viewer.window.add_plugin_dock_widget("napari-imedsam", "I-MedSAM annotator")
    dock.accept_slice()
    assert "no image layer" in errors[-1]
    viewer.add_image(np.zeros((3, 4, 16, 16), np.float32), name="4d")
    dock.reset_choices()
    dock.accept_slice()
    assert "2D images (grey or RGB) and 3D volumes" in errors[-1] and "'4d'" in errors[-1]
    assert "I-MedSAM boxes" not in viewer.layers
    dock.model_combo.value = "checkpoint file…"
    dock.load_selected_model()  # no file chosen
    assert "choose a checkpoint file" in errors[-1]
    dock.checkpoint.value = str(tmp_path / "missing.pth")
    dock.load_selected_model()
    dock.wait_until_idle()
    assert "missing.pth: no such model file" in errors[-1] and dock.state.model is None


def test_keys_collide_with_nothing_in_napari():
    from napari.utils.shortcuts import default_shortcuts

    from napari_imedsam.widgets.actions import ACTIONS

    taken = {str(k).replace("+", "-") for keys in default_shortcuts.values() for k in keys}
    ours = {key for key, _, _ in ACTIONS.values()}
    assert not ours & taken, ours & taken
    assert len(ours) == len(ACTIONS)


def test_closing_and_reopening_the_dock_keeps_the_model_and_the_work(docked):
    viewer, dock = docked
    image, boxes, labels, truth, names = thorax(viewer, dock)
    draw(viewer, dock, image, truth == names["aorta_000"])
    model = dock.state.model
    dock.state.choices = {"corrector_file": "/data/corrector.safetensors"}  # as the Load button records it
    viewer.window.remove_dock_widget(dock)
    _, again = viewer.window.add_plugin_dock_widget("napari-imedsam", "I-MedSAM annotator")
    assert again is not dock and again.state.model is model
    assert str(again.corrector_file.value) == "/data/corrector.safetensors"  # shows what is loaded
    # the next box, drawn straight away, is handled and reported by the reopened dock (the old one is deaf)
    select(viewer, boxes)
    boxes.mode = "add_rectangle"
    dock.wait_until_idle()
    label = draw(viewer, again, image, truth == names["heart_ventricle_left_000"])
    assert label == 2 and f"Object 2: {int((labels.data == 2).sum())} px written" in again.status_text()
    assert "Object 2" not in dock.status_text()
    again.undo()  # the same session: undo takes back the new box, then the first box's result
    again.undo()
    assert not labels.data.any()


def test_load_button_adds_the_layers_one_turn_at_a_time_then_says_ready(make_napari_viewer, monkeypatch):
    """The Load button with an image open: the worker loads, then each plugin layer is added in its own
    turn of the event loop (so the window never freezes for all four), in display order, and only then
    does the dock say the model is ready (boxes layer selected, ready to draw)."""
    from napari_imedsam.widgets.layers import BOXES, COARSE, LayerSet

    limits = []
    add_missing = LayerSet.add_missing
    monkeypatch.setattr(LayerSet, "add_missing",
                        lambda self, limit=None: limits.append(limit) or add_missing(self, limit))
    viewer, dock = thorax_dock_with_demo_chosen(make_napari_viewer)
    seen = []
    viewer.layers.events.inserted.connect(lambda event: seen.append(event.value.name))
    press_load(dock)
    assert "Model demo ready" in dock.status_text(), dock.status_text()
    assert seen == [UNCERTAINTY, COARSE, LABELS, BOXES]
    assert limits[:4] == [1, 1, 1, 1]  # one layer per turn (then the session's own check adds none)
    names = [layer.name for layer in viewer.layers]
    assert names[-4:] == seen and viewer.layers[BOXES].mode == "add_rectangle"


def test_mirror_averaging_from_the_dock_and_it_survives_a_model_reload(docked):
    """Tick 'Mirror averaging': the next mouse-drawn box is the mean over the slice's mirrors (the labels
    written equal the mirrored prediction for that box); it stays on after the model is served again."""
    from napari_imedsam.inference.predictor import Predictor
    from napari_imedsam.widgets import models

    viewer, dock = docked
    image, boxes, labels, truth, names = thorax(viewer, dock)
    dock.mirror.value = True
    assert dock.state.predictor.mirror and "Mirror averaging on" in dock.status_text()
    mask = truth == names["aorta_000"]
    label = draw(viewer, dock, image, mask)
    box = boxes.data[-1]
    (y0, x0), (y1, x1) = box.min(axis=0), box.max(axis=0)
    expected = Predictor(dock.state.model, mirror=True).predict(image.data, [x0, y0, x1, y1]).refined_mask
    assert dice(labels.data == label, expected) > 0.99 and dice(labels.data == label, mask) > 0.7
    models.serve(dock, dock.state.model)  # what loading a model or an adapter version does
    assert dock.state.predictor.mirror
    dock.mirror.value = False
    assert not dock.state.predictor.mirror


def test_fine_tuning_on_uncorrected_masks_says_there_was_nothing_to_learn(docked, tmp_path, monkeypatch):
    """Accepting the model's own masks unchanged and fine-tuning: the dock says the weights stayed the
    same because the masks match the model, and saves no new version (no copy of the weights it started
    from in the folder, no duplicate entry in the version list, the live model unchanged). Fine-tuning
    with nothing accepted is one message; Export after fine-tuning says the slices are already there."""
    infos, errors = [], []
    monkeypatch.setattr("napari_imedsam.widgets.finetune.show_info", infos.append)
    monkeypatch.setattr("napari_imedsam.widgets.dock.show_error", errors.append)
    viewer, dock = docked
    image, boxes, labels, truth, names = thorax(viewer, dock)
    dock.workdir.value = str(tmp_path / "work")
    dock.finetune_button.clicked()
    dock.wait_until_idle(300000)
    assert len(errors) == 1 and "at least 2 accepted objects" in errors[0] and not infos, (errors, infos)
    for structure in ("aorta_000", "heart_ventricle_left_000", "vertebrae_T9_000"):
        draw(viewer, dock, image, truth == names[structure])
    dock.accept_button.clicked()
    dock.steps.value = 10
    choices, version, model = list(dock.version_combo.choices), dock.version_combo.value, dock.state.model
    dock.finetune_button.clicked()
    dock.wait_until_idle(300000)
    report = dock.tuner.last_report
    assert report is not None, dock.status_text()
    written = sorted((tmp_path / "work" / "adapters").rglob("*.safetensors"))
    if report.kept_base:  # the result is the starting weights: nothing saved, nothing switched
        assert written == [] and report.version_path is None, written
        assert list(dock.version_combo.choices) == choices and dock.version_combo.value == version
        assert dock.state.model is model and "No new version saved" in dock.status_text(), dock.status_text()
    if report.kept_base and report.before["dice"] >= 0.999:
        assert "nothing to learn" in dock.status_text(), dock.status_text()
    else:  # the model's own masks, re-predicted from the exported boxes, can differ slightly: then no claim
        assert "nothing to learn" not in dock.status_text()
    dock.export_button.clicked()  # fine-tuning exported the accepted slice
    dock.wait_until_idle()
    assert "1 accepted slice(s) are already exported to" in errors[-1], errors


def test_export_clicked_again_before_it_ends_writes_each_slice_once(docked, tmp_path, monkeypatch):
    """A double-click on Export, then Fine-tune at once: both would export the slices not marked exported
    yet (marked when the first export ends), so the slice became two cases and a copy of a training slice
    was held back to validate on. Now the second and third presses are refused with one message each."""
    from napari_imedsam.io.export import read_prompts

    errors = []
    monkeypatch.setattr("napari_imedsam.widgets.dock.show_error", errors.append)
    viewer, dock = docked
    image, boxes, labels, truth, names = thorax(viewer, dock)
    dock.workdir.value = str(tmp_path / "work")
    for structure in ("aorta_000", "heart_ventricle_left_000"):
        draw(viewer, dock, image, truth == names[structure])
    dock.accept_button.clicked()
    dock.export_button.clicked()
    dock.export_button.clicked()  # the first export's worker is still running
    dock.finetune_button.clicked()
    dock.wait_until_idle(60000)
    assert errors == ["an export is already running",
                      "an export is still running: fine-tuning can start when it ends"], errors
    [folder] = (tmp_path / "work" / "exports").iterdir()
    assert sorted({row["case"] for row in read_prompts(folder)}) == ["imedsam_00001"]
    assert "(1 case(s) there now)" in dock.status_text(), dock.status_text()

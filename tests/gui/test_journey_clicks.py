"""Click prompts the way a person uses them: a loose box gives a poor mask, Shift-C and a click where
the mask misses the object, Shift-E and a click where it covers too much; Undo takes back the last
click with its result; Shift-B returns to boxes and the next box is a new object."""

from __future__ import annotations

import numpy as np
import pytest

from napari_imedsam.evaluation import next_click
from napari_imedsam.inference.boxes import box_of_mask
from napari_imedsam.widgets.clicks import POINTS

from .conftest import dice, press_load, thorax_dock_with_demo_chosen
from .test_journey_2d import draw, thorax
from .user import click, press_key

pytestmark = pytest.mark.gui


def test_clicks_correct_an_object_without_re_encoding(docked):
    viewer, dock = docked
    image, boxes, labels, truth, names = thorax(viewer, dock)
    target = truth == names["heart_ventricle_left_000"]
    # a loose box: the mask spills into the neighbours
    x0, y0, x1, y1 = box_of_mask(target)
    loose = np.zeros_like(target)
    loose[int(y0) - 12:int(y1) + 13, int(x0) - 12:int(x1) + 13] = True
    label = draw(viewer, dock, image, loose)
    first = dice(labels.data == label, target)
    misses = dock.session().predictor.cache.misses
    assert dock.session().predictor.click_refiner is not None  # demo's bundled click refiner is in use

    scores = [first]
    for _ in range(3):
        predicted = labels.data == label
        row, col, positive = next_click(predicted, target)
        press_key(viewer, "Shift-C" if positive else "Shift-E")
        points = viewer.layers[POINTS]
        assert viewer.layers.selection.active is points and points.mode == "add"
        n = len(points.data)
        click(viewer, image, (row, col))
        dock.wait_until_idle()
        assert len(points.data) == n + 1, "the click did not add a point"
        assert int(points.features["label"].iloc[-1]) == label
        assert bool(points.features["positive"].iloc[-1]) == bool(positive)
        scores.append(dice(labels.data == label, target))
    print("Dice after 0..3 clicks (demo model, loose box):", [round(s, 3) for s in scores])
    assert max(scores[1:]) > first + 0.02, scores
    assert dock.session().predictor.cache.misses == misses  # clicks never re-encode

    # Undo takes back the last click and its result
    before_last = labels.data.copy()
    dock.undo_button.clicked()
    assert len(viewer.layers[POINTS].data) == 2
    assert not np.array_equal(labels.data, before_last)

    # back to boxes: the next box is a new object
    press_key(viewer, "Shift-B")
    assert viewer.layers.selection.active is boxes and boxes.mode == "add_rectangle"
    new = draw(viewer, dock, image, truth == names["aorta_000"])
    assert new == label + 1


def deepest_miss(predicted: np.ndarray, target: np.ndarray) -> tuple[int, int]:
    """The pixel of the object farthest inside what the mask misses."""
    from scipy import ndimage

    depth = ndimage.distance_transform_edt(np.pad(target & ~predicted, 1))[1:-1, 1:-1]
    row, col = np.unravel_index(int(np.argmax(depth)), depth.shape)
    return int(row), int(col)


def test_several_clicks_after_one_key_press_each_count_and_undo_then_click_works(docked):
    """A user presses Shift-C once and clicks three times: every click is its own click (napari copies
    the selected point's features to the next point: the dock must not take that for an old click),
    green, and re-runs the object; after Undo the next click counts too. Shift-E then does not recolour
    the last click."""
    viewer, dock = docked
    image, boxes, labels, truth, names = thorax(viewer, dock)
    target = truth == names["heart_ventricle_left_000"]
    label = draw(viewer, dock, image, target)
    press_key(viewer, "Shift-C")
    points = viewer.layers[POINTS]
    scores = [dice(labels.data == label, target)]
    for _ in range(3):
        click(viewer, image, deepest_miss(labels.data == label, target))
        dock.wait_until_idle()
        scores.append(dice(labels.data == label, target))
    ids = points.features["click"].to_numpy()
    assert len(ids) == 3 and len(set(ids.tolist())) == 3 and 0 not in ids, ids
    assert points.features["positive"].all() and (points.features["label"] == label).all()
    np.testing.assert_allclose(points.face_color[:, :3], np.tile([0.0, 1.0, 0.0], (3, 1)))  # lime
    assert set(dock.session().results[(None, label)].clicks) == set(ids.tolist())  # the last run used all three
    print("Dice after 0..3 clicks after one Shift-C:", [round(v, 3) for v in scores])
    dock.undo_button.clicked()
    assert len(points.data) == 2
    before = labels.data.copy()
    click(viewer, image, deepest_miss(labels.data == label, target))
    dock.wait_until_idle()
    assert len(points.data) == 3 and len(set(points.features["click"].tolist())) == 3
    assert set(dock.session().results[(None, label)].clicks) == set(points.features["click"].tolist())
    assert not np.array_equal(labels.data, before), "the click after Undo changed nothing"
    press_key(viewer, "Shift-E")
    np.testing.assert_allclose(points.face_color[:, :3], np.tile([0.0, 1.0, 0.0], (3, 1)))  # still lime


def test_a_click_on_another_object_goes_to_that_object(docked, monkeypatch):
    """Two boxes in a row leave the second object selected; a click that plainly concerns the first one
    (in its box, outside the second's) corrects the first, selects it, says so once, and leaves the
    second object's mask alone."""
    import napari_imedsam.widgets.clicks as clicks_module

    told = []
    monkeypatch.setattr(clicks_module, "show_info", told.append)
    viewer, dock = docked
    image, boxes, labels, truth, names = thorax(viewer, dock)
    heart = truth == names["heart_ventricle_left_000"]
    first = draw(viewer, dock, image, heart)
    second = draw(viewer, dock, image, truth == names["vertebrae_T9_000"])
    assert int(labels.selected_label) == second
    before, second_mask = dice(labels.data == first, heart), (labels.data == second).copy()
    for _ in range(2):
        row, col, positive = next_click(labels.data == first, heart)
        press_key(viewer, "Shift-C" if positive else "Shift-E")
        click(viewer, image, (row, col))
        dock.wait_until_idle()
        points = viewer.layers[POINTS]
        assert int(points.features["label"].iloc[-1]) == first
        assert int(labels.selected_label) == first
    after = dice(labels.data == first, heart)
    print(f"object {first} Dice {before:.3f} -> {after:.3f} after two clicks made with object {second} selected")
    assert after > before
    assert np.array_equal(labels.data == second, second_mask)
    assert told == [f"I-MedSAM: click sent to object {first}"], told


def test_a_click_refiner_chosen_in_the_dock_is_the_one_clicks_use(make_napari_viewer, tmp_path, monkeypatch):
    """The dock's 'click refiner' field: Load model with a refiner file trained by the user puts that
    refiner (not the bundled one) behind every click, with a warning when its training found it no
    better than the walker; a file that is not a click refiner is one clear error and the dock keeps
    working."""
    import napari.utils.notifications

    from napari_imedsam.model.click_refiner import ClickRefiner, save_click_refiner

    warnings = []
    monkeypatch.setattr(napari.utils.notifications, "show_warning", warnings.append)
    mine = tmp_path / "mine.safetensors"
    save_click_refiner(ClickRefiner(), mine, {"trained_on": "my slices", "helps": False,
                                              "metrics_before": {"score": 0.91}, "metrics": {"score": 0.905}})
    viewer, dock = thorax_dock_with_demo_chosen(make_napari_viewer)
    dock.refiner_file.value = mine
    press_load(dock)
    assert "Model demo ready" in dock.status_text(), dock.status_text()
    assert dock.session().predictor.click_refiner.header["trained_on"] == "my slices"
    assert dock.state.choices["refiner_file"] == mine  # a reopened dock shows it again
    assert warnings == ["this click refiner did not beat the random walker alone when it was trained (held-back "
                        "Dice 0.910 -> 0.905): its clicks may be worse than the walker's"]

    not_a_refiner = tmp_path / "adapters.safetensors"
    import torch

    from napari_imedsam.model.weights import atomic_save_safetensors

    atomic_save_safetensors({"x": torch.zeros(2)}, not_a_refiner, {"kind": "adapters"})
    dock.refiner_file.value = not_a_refiner
    press_load(dock)
    assert "click refiner: not a click-refiner file" in dock.status_text(), dock.status_text()  # reason first
    dock.refiner_file.value = tmp_path / "gone.safetensors"
    press_load(dock)
    assert "click refiner: no such file" in dock.status_text(), dock.status_text()
    assert dock.session().predictor.click_refiner.header["trained_on"] == "my slices"  # the model in use stays


def test_a_positive_click_outside_the_box_grows_the_drawn_box_and_undo_shrinks_it(docked):
    """A box drawn over half the ventricle, then a positive click on the other half: the object's box grows
    to take the click in, and the drawn box shows it (it used to stay as drawn, so the user could not see
    which box the next click would use); Undo puts the drawn box back."""
    viewer, dock = docked
    image, boxes, labels, truth, names = thorax(viewer, dock)
    target = truth == names["heart_ventricle_left_000"]
    x0, y0, x1, y1 = box_of_mask(target)
    left = target.copy()
    left[:, int((x0 + x1) / 2):] = False
    label = draw(viewer, dock, image, left)
    drawn = np.array(boxes.data[-1], float)
    right = target & ~left
    rows, cols = np.nonzero(right)
    far = int(np.argmax(cols))
    press_key(viewer, "Shift-C")
    click(viewer, image, (int(rows[far]), int(cols[far])))
    dock.wait_until_idle()
    grown = np.array(boxes.data[-1], float)
    assert grown[:, 1].max() >= cols[far] and grown[:, 1].max() > drawn[:, 1].max() + 5, (drawn, grown)
    np.testing.assert_allclose(dock.session().results[(None, label)].box_xyxy,
                               [grown[:, 1].min(), grown[:, 0].min(), grown[:, 1].max(), grown[:, 0].max()], atol=0.5)
    assert "grew to take in the positive click" in dock.status_text()
    dock.undo_button.clicked()
    np.testing.assert_allclose(np.array(boxes.data[-1], float), drawn, atol=0.5)


def test_a_click_before_any_box_is_removed_and_does_not_shape_the_next_box(docked, monkeypatch):
    """Shift-E and a click with no object yet: one message, and the click goes (it stayed on the layer and
    cut a hole in the next box's mask, which also lost its suggestions as an object 'with clicks')."""
    errors = []
    monkeypatch.setattr("napari_imedsam.widgets.dock.show_error", errors.append)
    viewer, dock = docked
    image, boxes, labels, truth, names = thorax(viewer, dock)
    target = truth == names["heart_ventricle_left_000"]
    press_key(viewer, "Shift-E")
    click(viewer, image, deepest_miss(np.zeros_like(target), target))
    dock.wait_until_idle()
    assert len(errors) == 1 and "has no box" in errors[0] and "the click was removed" in errors[0], errors
    assert len(viewer.layers[POINTS].data) == 0
    press_key(viewer, "Shift-B")
    label = draw(viewer, dock, image, target)
    result = dock.session().results[(None, label)]
    assert result.clicks == ()  # a box's result
    assert (labels.data == label)[deepest_miss(np.zeros_like(target), target)]

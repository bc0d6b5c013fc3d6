"""The dock widget end to end in a real napari viewer (Xvfb), with the briefly fitted tiny model."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_imedsam.inference.predictor import Predictor
from napari_imedsam.io.phantoms import ellipse_phantoms
from src_train.points import box_of_mask

from ..test_session import tube_volume

pytestmark = pytest.mark.gui
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"


@pytest.fixture
def docked(make_napari_viewer, fitted):
    viewer = make_napari_viewer(show=True)
    _, widget = viewer.window.add_plugin_dock_widget("napari-imedsam", "I-MedSAM annotator")
    return viewer, widget, fitted[0]


def show(viewer, widget, loaded, image, name="image", **layer_kwargs):
    """Add an image, give the widget the model, create the I-MedSAM layers."""
    viewer.add_image(image, name=name, **layer_kwargs)
    widget.set_model(loaded)
    return widget.ensure_layers()


def draw_box(viewer, widget, qtbot, corners_rc, expect_label=None):
    """Add a rectangle as a user would and wait for the worker to write the labels."""
    boxes = viewer.layers["I-MedSAM boxes"]
    n_before = len(boxes.data)
    boxes.add_rectangles(np.asarray(corners_rc, float))
    assert len(boxes.data) == n_before + 1
    label = int(boxes.features["label"].iloc[-1])
    labels = viewer.layers["I-MedSAM labels"]
    qtbot.waitUntil(lambda: widget._box_worker is None and widget._pending_box is None
                    and (labels.data == (expect_label or label)).any(), timeout=20000)
    return label


def test_manifest_is_valid_and_contributes_everything():
    from npe2 import PluginManager, PluginManifest

    manifest = PluginManifest.from_file(Path(__file__).resolve().parents[2] / "napari.yaml")
    assert manifest.name == "napari-imedsam"
    assert {s.key for s in manifest.contributions.sample_data} >= {"ct_abdomen", "phantom_3d"}
    assert manifest.contributions.readers and manifest.contributions.writers and manifest.contributions.widgets
    manager = PluginManager.instance()
    manager.discover()
    installed = manager.get_manifest("napari-imedsam")  # found through the package's entry point
    assert installed.name == "napari-imedsam"


def test_box_gives_three_layers_matching_the_headless_predictor(docked, qtbot):
    viewer, widget, loaded = docked
    image, mask = ellipse_phantoms(1, seed=11)[0]
    show(viewer, widget, loaded, image, "phantom")
    x0, y0, x1, y1 = box_of_mask(mask)
    label = draw_box(viewer, widget, qtbot, [[y0, x0], [y1, x1]])
    labels = viewer.layers["I-MedSAM labels"].data
    coarse = viewer.layers["I-MedSAM coarse probability"].data
    uncertainty = viewer.layers["I-MedSAM uncertainty"].data
    assert labels.shape == coarse.shape == uncertainty.shape == image.shape
    expected = Predictor(loaded).predict(image, (x0, y0, x1, y1))
    np.testing.assert_array_equal(labels == label, expected.refined_mask)
    np.testing.assert_allclose(uncertainty, expected.uncertainty, atol=1e-6)
    rows, cols = np.nonzero(labels)
    margin = 0.1 * max(x1 - x0, y1 - y0) + 3
    assert rows.min() >= y0 - margin and rows.max() <= y1 + margin
    assert cols.min() >= x0 - margin and cols.max() <= x1 + margin
    dice = 2 * ((labels == label) & mask).sum() / ((labels == label).sum() + mask.sum())
    assert dice > 0.85

    # uncertainty toggles from the button and the key binding
    layer = viewer.layers["I-MedSAM uncertainty"]
    widget.show_uncertainty.value = False
    assert not layer.visible
    widget.show_uncertainty.value = True
    assert layer.visible

    ARTIFACTS.mkdir(exist_ok=True)
    viewer.window.screenshot(path=str(ARTIFACTS / "widget_result.png"), flash=False)
    assert (ARTIFACTS / "widget_result.png").stat().st_size > 10_000


def test_painted_corrections_survive_a_new_box(docked, qtbot):
    viewer, widget, loaded = docked
    image, mask = ellipse_phantoms(1, seed=11)[0]
    show(viewer, widget, loaded, image, "phantom")
    labels = viewer.layers["I-MedSAM labels"]
    rows, cols = np.nonzero(mask)
    r, c = int(rows.mean()), int(cols.mean())
    labels.selected_label = 9
    labels.paint((r, c), 9)  # a user brush stroke inside the object
    painted = labels.data == 9
    assert painted.any()
    x0, y0, x1, y1 = box_of_mask(mask)
    label = draw_box(viewer, widget, qtbot, [[y0, x0], [y1, x1]])
    assert label == 10  # a new object gets a new label value
    assert (labels.data[painted] == 9).all()


def test_volume_segments_the_displayed_slice_then_propagates(docked, qtbot):
    viewer, widget, loaded = docked
    volume, truth = tube_volume()
    show(viewer, widget, loaded, volume, "tube", scale=(2.0, 1.0, 1.0))
    middle = volume.shape[0] // 2
    widget.go_to_slice(middle)
    assert widget.current_slice() == middle
    x0, y0, x1, y1 = box_of_mask(truth[middle])
    corners = [[middle, y0, x0], [middle, y0, x1], [middle, y1, x1], [middle, y1, x0]]  # as napari draws them
    label = draw_box(viewer, widget, qtbot, corners)
    labels = viewer.layers["I-MedSAM labels"].data
    assert [z for z in range(volume.shape[0]) if labels[z].any()] == [middle]  # displayed slice only

    viewer.layers["I-MedSAM labels"].selected_label = label
    widget.propagate()
    qtbot.waitUntil(lambda: widget._propagation is None, timeout=60000)
    filled = [z for z in range(volume.shape[0]) if (labels[z] == label).any()]
    assert len(filled) >= 5 and middle in filled
    assert filled[0] >= 1 and filled[-1] <= volume.shape[0] - 2

    widget.next_uncertain_slice()
    review = widget.current_slice()
    assert review in filled
    widget.accept_slice()
    assert [list(item) for item in viewer.layers["I-MedSAM labels"].metadata["imedsam_accepted"]] == [[0, review]]


def test_errors_notify_and_leave_layers_intact(docked, qtbot, monkeypatch):
    viewer, widget, loaded = docked
    messages = []
    monkeypatch.setattr("napari_imedsam.widgets.dock.show_error", messages.append)
    widget.accept_slice()  # no image, no model
    assert messages and "no image layer" in messages[-1]
    viewer.add_image(np.zeros((4, 5, 6, 7), np.float32), name="4d")
    widget.set_model(loaded)
    widget.accept_slice()
    assert "2D images and 3D volumes" in messages[-1]
    image, mask = ellipse_phantoms(1, seed=3)[0]
    viewer.layers.remove("4d")
    viewer.add_image(image, name="phantom")
    widget.ensure_layers()
    before = viewer.layers["I-MedSAM labels"].data.copy()
    viewer.layers["I-MedSAM boxes"].add_rectangles(np.array([[500.0, 500.0], [600.0, 600.0]]))
    qtbot.waitUntil(lambda: any("outside" in m for m in messages), timeout=20000)
    np.testing.assert_array_equal(viewer.layers["I-MedSAM labels"].data, before)


@pytest.mark.skipif(not os.environ.get("DISPLAY"), reason="needs a display")
def test_sample_data_opens_from_the_manifest(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-imedsam", "ct_abdomen")
    assert viewer.layers["CT abdomen"].data.ndim == 2
    assert viewer.layers["CT abdomen expert masks"].data.max() >= 3
    viewer.open_sample("napari-imedsam", "phantom_3d")
    assert viewer.layers["phantom CT (HU)"].data.ndim == 3


def test_fine_tune_button_trains_reports_loads_and_reverts(docked, qtbot, tmp_path, monkeypatch):
    viewer, widget, fitted_model = docked
    import copy

    loaded = copy.deepcopy(fitted_model)  # this test changes weights: keep the shared fixture intact
    infos = []
    monkeypatch.setattr("napari_imedsam.widgets.dock.show_info", infos.append)
    volume, truth = tube_volume()
    viewer.add_image(volume, name="tube")
    widget.set_model(loaded)
    widget.workdir.value = str(tmp_path)
    widget.epochs.value = 3
    widget.ensure_layers()
    middle = volume.shape[0] // 2
    widget.go_to_slice(middle)
    x0, y0, x1, y1 = box_of_mask(truth[middle])
    label = draw_box(viewer, widget, qtbot, [[middle, y0, x0], [middle, y0, x1], [middle, y1, x1], [middle, y1, x0]])
    viewer.layers["I-MedSAM labels"].selected_label = label
    widget.propagate()
    qtbot.waitUntil(lambda: widget._propagation is None, timeout=60000)
    for z in (middle - 1, middle, middle + 1):
        widget.go_to_slice(z)
        widget.accept_slice()
    base_state = {k: v.clone() for k, v in loaded.network.state_dict().items()}

    widget.fine_tune()
    qtbot.waitUntil(lambda: widget._finetune is None, timeout=120000)
    report = widget.last_report
    assert report is not None and report.version_path.exists()
    assert (tmp_path / "exports" / "tube" / "dataset.json").exists()
    assert len(list((tmp_path / "exports" / "tube" / "labelsTr").iterdir())) == 3
    assert any(m.startswith("No GPU: fine-tuning the decoder only") for m in infos)
    assert any(m.startswith("Dice on held-back accepted slices: before") for m in infos)
    assert widget.version_combo.choices == ("base", "tube/v001")
    assert loaded.adapter_version == str(report.version_path)  # loaded automatically
    changed = [k for k, v in loaded.network.state_dict().items() if not torch.equal(v, base_state[k])]
    assert changed and all("inr" in k or "prompt_encoder" in k or "upscaling" in k for k in changed)

    widget.version_combo.value = "base"  # restore the previous version from the picker
    for key, value in loaded.network.state_dict().items():
        assert torch.equal(value, base_state[key]), key


def test_moving_a_box_never_reencodes_and_neighbours_are_prefetched(docked, qtbot):
    viewer, widget, loaded = docked
    volume, truth = tube_volume()
    show(viewer, widget, loaded, volume, "tube")
    middle = volume.shape[0] // 2
    widget.go_to_slice(middle)
    cache = widget.predictor.cache
    qtbot.waitUntil(lambda: len(cache) == 3 and widget._prefetch is None, timeout=20000)  # slice and both neighbours
    misses = cache.misses
    x0, y0, x1, y1 = box_of_mask(truth[middle])
    corners = np.array([[middle, y0, x0], [middle, y0, x1], [middle, y1, x1], [middle, y1, x0]], float)
    label = draw_box(viewer, widget, qtbot, corners)
    boxes = viewer.layers["I-MedSAM boxes"]
    labels = viewer.layers["I-MedSAM labels"]
    before = labels.data.copy()
    boxes.data = [corners + [0, 0, 6]]  # the user drags the box 6 px to the right
    qtbot.waitUntil(lambda: widget._box_worker is None and not np.array_equal(labels.data, before), timeout=20000)
    assert cache.misses == misses  # the encoder never ran again
    assert (labels.data == label).any()


def test_rgb_image_with_translate(docked, qtbot):
    viewer, widget, loaded = docked
    grey, mask = ellipse_phantoms(1, seed=11)[0]
    rgb = (np.repeat(grey[..., None], 3, -1).clip(0, 1) * 255).astype(np.uint8)
    boxes = show(viewer, widget, loaded, rgb, "rgb", rgb=True, translate=(40.0, -25.0))[0]
    assert tuple(boxes.translate) == (40.0, -25.0)
    x0, y0, x1, y1 = box_of_mask(mask)
    label = draw_box(viewer, widget, qtbot, [[y0, x0], [y1, x1]])  # data coordinates of the image
    labels = viewer.layers["I-MedSAM labels"]
    assert labels.data.shape == mask.shape and tuple(labels.translate) == (40.0, -25.0)
    expected = Predictor(loaded).predict(rgb, (x0, y0, x1, y1)).refined_mask
    np.testing.assert_array_equal(labels.data == label, expected)


def test_missing_model_file_is_one_notification(docked, qtbot, tmp_path, monkeypatch):
    viewer, widget, _ = docked
    messages = []
    monkeypatch.setattr("napari_imedsam.widgets.dock.show_error", messages.append)
    widget.model_combo.value = "checkpoint file…"
    widget.checkpoint.value = str(tmp_path / "missing.pth")
    widget.load_selected_model()
    qtbot.waitUntil(lambda: bool(messages), timeout=20000)
    assert len(messages) == 1 and "missing.pth: no such model file" in messages[0]
    assert widget.model is None


def test_make_demo_window_segments_the_first_box_and_saves_a_screenshot(tmp_path):
    import subprocess
    import sys

    from PIL import Image

    shot = tmp_path / "window.png"
    run = subprocess.run([sys.executable, "-m", "napari_imedsam.demo", "--screenshot", str(shot)],
                         capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"wrote {shot}" in run.stdout and "timed out" not in run.stdout  # the liver box was segmented
    assert np.asarray(Image.open(shot)).std() > 10  # a drawn window, not a blank frame

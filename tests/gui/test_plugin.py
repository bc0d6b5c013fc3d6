"""The plugin as napari sees it: manifest, samples, make demo's window, RGB with translate, a box
move that re-runs only the decoder, every slice embedded in the background."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from napari_imedsam.inference.boxes import box_of_mask
from napari_imedsam.inference.predictor import Predictor
from napari_imedsam.io.phantoms import ellipse_phantoms

from ..test_session import phantom_volume
from .conftest import open_image
from .user import drag, drag_box, to_canvas

pytestmark = pytest.mark.gui
ROOT = Path(__file__).resolve().parents[2]


def test_manifest_is_valid_and_contributes_everything():
    from npe2 import PluginManager, PluginManifest

    manifest = PluginManifest.from_file(ROOT / "napari.yaml")
    assert manifest.name == "napari-imedsam"
    assert {s.key for s in manifest.contributions.sample_data} >= {"ct_abdomen", "ct_thorax", "ct_pelvis", "phantom_3d"}
    assert manifest.contributions.readers and manifest.contributions.writers and manifest.contributions.widgets
    manager = PluginManager.instance()
    manager.discover()
    assert manager.get_manifest("napari-imedsam").name == "napari-imedsam"  # found through the entry point


def test_sample_data_opens_from_the_manifest(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-imedsam", "ct_abdomen")
    assert viewer.layers["CT abdomen"].data.ndim == 2
    assert viewer.layers["CT abdomen expert masks"].data.max() >= 3
    viewer.open_sample("napari-imedsam", "ct_pelvis")
    assert viewer.layers["CT pelvis"].data.ndim == 2
    viewer.open_sample("napari-imedsam", "phantom_3d")
    assert viewer.layers["phantom CT (HU)"].data.ndim == 3


def test_rgb_image_with_translate(docked):
    viewer, dock = docked
    grey, mask = ellipse_phantoms(1, seed=11)[0]
    rgb = (np.repeat(grey[..., None], 3, -1).clip(0, 1) * 255).astype(np.uint8)
    image, boxes, labels = open_image(viewer, dock, rgb, "rgb", rgb=True, translate=(40.0, -25.0))
    assert tuple(boxes.translate) == (40.0, -25.0) == tuple(labels.translate)
    x0, y0, x1, y1 = box_of_mask(mask)
    boxes.add_rectangles(np.array([[y0, x0], [y1, x1]]))  # data coordinates of the image
    dock.wait_until_idle()
    expected = Predictor(dock.state.model).predict(rgb, (x0, y0, x1, y1)).refined_mask
    np.testing.assert_array_equal(labels.data == 1, expected)


def test_moving_a_box_reruns_only_the_decoder_and_slices_are_embedded_in_the_background(docked, fitted):
    viewer, dock = docked
    dock.set_model(fitted[0])  # a whole-slice model: embeddings are cached per slice
    volume, truth = phantom_volume((9, 96, 96))
    truth = truth > 0
    image, boxes, labels = open_image(viewer, dock, volume, "phantom", contrast_limits=(-160, 240))
    dock.go_to_slice(4)
    cache = dock.state.predictor.cache
    dock.wait_until_idle(background=True)
    assert len(cache) == 9  # every slice, in the background
    misses = cache.misses
    x0, y0, x1, y1 = box_of_mask(truth[4])
    drag_box(viewer, image, (4, y0, x0), (4, y1, x1))
    dock.wait_until_idle()
    first = labels.data.copy()
    assert (first[4] == 1).any()
    boxes.mode = "select"
    viewer.layers.selection.active = boxes
    boxes.selected_data = {0}
    centre = to_canvas(viewer, image, (4, (y0 + y1) / 2, (x0 + x1) / 2))
    drag(viewer, centre, centre + (to_canvas(viewer, image, (4, 0, 8)) - to_canvas(viewer, image, (4, 0, 0))))
    dock.wait_until_idle()
    assert not np.array_equal(labels.data, first)  # the moved box was segmented again
    assert cache.misses == misses  # the encoder never ran again


def test_make_demo_window_segments_the_first_box_and_saves_a_screenshot(tmp_path):
    from PIL import Image

    shot = tmp_path / "window.png"
    run = subprocess.run([sys.executable, "-m", "napari_imedsam.demo", "--screenshot", str(shot)], cwd=ROOT,
                         capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"wrote {shot}" in run.stdout and "timed out" not in run.stdout  # the liver box was segmented
    assert np.asarray(Image.open(shot)).std() > 10  # a drawn window, not a blank frame


def test_opening_the_dock_refits_an_image_it_would_crop_but_keeps_a_view_the_user_chose(make_napari_viewer):
    """The dock takes room from the canvas: the CT sample, fitted to the wider canvas, would be cut off
    left and right; it is fitted again. A view the user zoomed and panned stays as it was."""
    import time
    import warnings

    from qtpy.QtWidgets import QApplication

    from .user import canvas_widget

    def settle():
        for _ in range(40):
            QApplication.processEvents()
            time.sleep(0.01)

    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1400, 900)
    settle()
    viewer.open_sample("napari-imedsam", "ct_thorax")
    image = viewer.layers["CT thorax"]
    settle()
    with warnings.catch_warnings(record=True) as caught:  # napari shows a warning as a toast to the user
        warnings.simplefilter("always")
        _, dock = viewer.window.add_plugin_dock_widget("napari-imedsam", "I-MedSAM annotator")
        settle()
    ours = [str(w.message) for w in caught if "napari_imedsam" in w.filename]
    assert not ours, ours  # the refit used napari's deprecated viewer.camera: a toast on every dock opening
    widget = canvas_widget(viewer)
    height, width = image.data.shape[:2]
    for corner in ((0, 0), (height - 1, width - 1)):
        point = to_canvas(viewer, image, corner)
        assert 0 <= point.x() <= widget.width() and 0 <= point.y() <= widget.height(), (corner, point)

    viewer.window.remove_dock_widget(dock)
    viewer.scene.camera.zoom, viewer.scene.camera.center = 6.0, (0.0, 60.0, 90.0)
    viewer.window.add_plugin_dock_widget("napari-imedsam", "I-MedSAM annotator")
    settle()
    assert viewer.scene.camera.zoom == 6.0 and tuple(viewer.scene.camera.center)[-2:] == (60.0, 90.0)

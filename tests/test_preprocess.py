"""Intensity windows, resize/pad geometry and the one (row, col) <-> (x, y) conversion."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_imedsam.inference.predictor import Predictor
from napari_imedsam.inference.preprocess import (
    CT_PRESETS,
    MR_PERCENTILES,
    Geometry,
    IntensityWindow,
    box_from_corners_rc,
    box_to_corners_rc,
    grid_points,
    normalize_intensity,
    scale_box,
    to_model_input,
)
from napari_imedsam.model.registry import load_model


def test_ct_window_maps_level_and_width():
    hu = np.array([[-1000.0, -160.0, 40.0], [240.0, 1000.0, 40.0]])
    out = normalize_intensity(hu, CT_PRESETS["soft tissue"])  # level 40, width 400
    np.testing.assert_allclose(out[..., 0], [[0.0, 0.0, 0.5], [1.0, 1.0, 0.5]])
    assert out.shape == (2, 3, 3) and out.dtype == np.float32


def test_mr_percentile_clipping_ignores_outliers():
    values = np.concatenate([np.linspace(0, 100, 998), [1e6, -1e6]]).reshape(20, 50)
    out = normalize_intensity(values, MR_PERCENTILES)[..., 0]
    assert out.min() == 0.0 and out.max() == 1.0
    middle = np.abs(values - 50).argmin()
    assert abs(out.flat[middle] - 0.5) < 0.02  # outliers did not squash the range


def test_rgb_uint8_passes_as_is():
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[..., 1] = 255
    out = normalize_intensity(rgb)
    np.testing.assert_array_equal(out[..., 1], 1.0)
    np.testing.assert_array_equal(out[..., 0], 0.0)


def test_bad_window_is_refused():
    with pytest.raises(ValueError, match="width must be positive"):
        normalize_intensity(np.zeros((3, 3)), IntensityWindow("window", level=0, width=0))


def test_geometry_resizes_longest_side_and_pads():
    geometry = Geometry(height=100, width=200, input_size=256)
    assert geometry.resized == (128, 256)
    assert geometry.extent == (1.0, 0.5)
    pixels = to_model_input(np.ones((100, 200, 3), np.float32), geometry)
    assert pixels.shape == (1, 3, 256, 256)
    assert torch.all(pixels[..., :128, :] == 255.0) and torch.all(pixels[..., 128:, :] == 0.0)
    np.testing.assert_allclose(geometry.box_to_input([10, 20, 30, 40]), [12.8, 25.6, 38.4, 51.2])


def test_napari_corners_and_boxes_convert_both_ways():
    corners_rc = np.array([[5.0, 10.0], [5.0, 30.0], [25.0, 30.0], [25.0, 10.0]])  # (row, col)
    box = box_from_corners_rc(corners_rc)
    np.testing.assert_array_equal(box, [10.0, 5.0, 30.0, 25.0])  # (x0, y0, x1, y1)
    np.testing.assert_array_equal(box_from_corners_rc(box_to_corners_rc(box)), box)


def test_box_scaling_and_query_points_use_pixel_centres():
    np.testing.assert_allclose(scale_box([0, 0, 9, 9], (10, 10), (20, 20)), [0.5, 0.5, 18.5, 18.5])
    points = grid_points(np.arange(2), np.arange(4), (2, 4))
    np.testing.assert_allclose(points[:4, 0].numpy(), [-0.75, -0.25, 0.25, 0.75])
    np.testing.assert_allclose(points[::4, 1].numpy(), [-0.5, 0.5])


@pytest.mark.parametrize("window", [None, CT_PRESETS["soft tissue"], MR_PERCENTILES, IntensityWindow("minmax")])
def test_a_crop_normalised_with_its_slice_range_equals_the_crop_of_the_normalised_slice(window):
    from napari_imedsam.inference.windows import intensity_range

    rng = np.random.default_rng(5)
    image = rng.normal(40, 300, (60, 70)).astype(np.float32)
    image[3, 4] = np.nan
    whole = normalize_intensity(image, window)
    crop = intensity_range(image, window).apply(image[10:40, 20:65])
    assert np.array_equal(crop, whole[10:40, 20:65])  # bit for bit: zoom crops need not normalise the slice


def test_zoomed_boxes_resolve_a_slice_window_once(monkeypatch):
    from napari_imedsam.inference import predictor as module

    calls = []
    original = module.intensity_range
    monkeypatch.setattr(module, "intensity_range", lambda *a: calls.append(1) or original(*a))
    predictor = Predictor(load_model("demo"))
    image = np.random.default_rng(0).normal(0, 1, (96, 96)).astype(np.float32)
    for shift in (0, 3, 6):
        predictor.predict(image, np.array([20 + shift, 20, 60 + shift, 60]), window=MR_PERCENTILES)
    assert len(calls) == 1

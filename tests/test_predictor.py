"""The headless Predictor: ROI decode = dense decode, any output size, meaningful uncertainty, caching."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage
from skimage.transform import resize

from napari_imedsam.evaluation import dice
from napari_imedsam.inference.predictor import Predictor
from napari_imedsam.inference.preprocess import CT_PRESETS, InputError
from napari_imedsam.io.phantoms import ellipse_phantoms
from src_train.points import box_of_mask

from .conftest import untrained


def test_short_fit_reduces_loss_and_segments(fitted):
    loaded, examples, losses = fitted
    assert np.mean(losses[-20:]) < 0.5 * np.mean(losses[:20])
    predictor = Predictor(loaded)
    image, mask = examples[0]
    result = predictor.predict(image, box_of_mask(mask))
    assert result.refined_mask.shape == mask.shape
    assert dice(result.refined_mask, mask) > 0.9


def test_roi_decode_matches_dense_decode(fitted):
    loaded, examples, _ = fitted
    predictor = Predictor(loaded)
    for image, mask in examples[:3] + ellipse_phantoms(2, seed=7):  # seen and unseen images
        box = box_of_mask(mask)
        roi = predictor.predict(image, box)
        dense = predictor.predict(image, box, dense=True)
        assert (roi.refined_mask == dense.refined_mask).mean() >= 0.995
        r0, r1, c0, c1 = roi.roi
        inside = (roi.refined_mask == dense.refined_mask)[r0:r1, c0:c1].mean()
        assert inside >= 0.99
        # the ROI path evaluated far fewer points exactly than the dense one
        assert roi.n_coarse_exact < 0.5 * dense.n_coarse_exact
        assert not roi.refined_mask[:r0].any() and not roi.refined_mask[r1:].any()


def test_outputs_at_64_256_1024_agree_after_resampling(fitted):
    loaded, examples, _ = fitted
    predictor = Predictor(loaded)
    image, mask = examples[1]
    box = box_of_mask(mask)
    masks = {size: predictor.predict(image, box, output_size=(size, size)).refined_mask for size in (64, 256, 1024)}
    reference = masks[256]
    for size in (64, 1024):
        resampled = resize(masks[size].astype(np.float32), (256, 256), order=1) > 0.5
        assert dice(resampled, reference) > 0.95, size
    assert dice(resize(mask.astype(np.float32), (1024, 1024), order=0) > 0.5, masks[1024]) > 0.9


def test_uncertainty_is_nonzero_and_peaks_on_the_boundary(fitted):
    loaded, examples, _ = fitted
    predictor = Predictor(loaded)
    image, mask = examples[2]
    result = predictor.predict(image, box_of_mask(mask), dense=True)
    assert result.uncertainty.max() > 0
    boundary = ndimage.binary_dilation(mask, iterations=2) & ~ndimage.binary_erosion(mask, iterations=2)
    inside = ndimage.binary_erosion(mask, iterations=5)
    outside = ~ndimage.binary_dilation(mask, iterations=5)
    assert result.uncertainty[boundary].mean() > 10 * result.uncertainty[inside].mean()
    assert result.uncertainty[boundary].mean() > 10 * result.uncertainty[outside].mean()
    assert result.n_refined > 0


def test_results_are_deterministic(fitted):
    loaded, examples, _ = fitted
    image, mask = examples[0]
    a = Predictor(loaded).predict(image, box_of_mask(mask))
    b = Predictor(loaded).predict(image, box_of_mask(mask))
    np.testing.assert_array_equal(a.uncertainty, b.uncertainty)
    np.testing.assert_array_equal(a.refined_prob, b.refined_prob)


def test_embedding_is_cached_per_content_and_window():
    predictor = Predictor(untrained())
    image = np.random.default_rng(0).normal(size=(40, 50)).astype(np.float32)
    predictor.predict(image, (5, 5, 30, 30))
    predictor.predict(image, (10, 10, 40, 35))  # new box: no new embedding
    assert (predictor.cache.misses, predictor.cache.hits) == (1, 1)
    predictor.predict(image, (5, 5, 30, 30), window=CT_PRESETS["lung"])  # new window: re-encode
    predictor.predict(image + 1, (5, 5, 30, 30))  # new content: re-encode
    assert predictor.cache.misses == 3 and len(predictor.cache) == 3


@pytest.mark.parametrize(
    ("box", "message"),
    [((100, 100, 120, 120), "lies outside"), ((10, 10, 10, 30), "zero or negative size"),
     ((20, 5, 10, 30), "zero or negative size"), ((1, 2, 3), "4 numbers")],
)
def test_bad_boxes_give_one_clear_error(box, message):
    predictor = Predictor(untrained())
    with pytest.raises(InputError, match=message):
        predictor.predict(np.zeros((40, 50), np.float32), box)


def test_wrong_dimensionality_is_refused():
    predictor = Predictor(untrained())
    with pytest.raises(InputError, match="Pick one slice"):
        predictor.predict(np.zeros((4, 40, 50), np.float32), (1, 1, 10, 10))


@pytest.mark.parametrize("image", [
    np.random.default_rng(0).integers(0, 255, (60, 80, 3), dtype=np.uint8),
    np.random.default_rng(0).integers(0, 4000, (60, 80), dtype=np.uint16),
    np.random.default_rng(0).normal(size=(60, 80)).astype(np.float64),
])
def test_rgb_uint16_and_float_images_are_accepted(image):
    result = Predictor(untrained()).predict(image, (10, 10, 50, 40))
    assert result.refined_prob.shape == (60, 80) and np.isfinite(result.refined_prob).all()


def test_zoom_equals_predicting_on_the_normalised_crop(fitted):
    from napari_imedsam.inference.preprocess import UNIT, normalize_intensity, zoom_region

    loaded, examples, _ = fitted
    image, mask = examples[3]
    box = box_of_mask(mask)
    zoomed = Predictor(loaded, zoom=True, zoom_margin=0.25).predict(image, box)
    r0, r1, c0, c1 = zoom_region(box, image.shape, 0.25)
    crop = normalize_intensity(image)[r0:r1, c0:c1]
    local = Predictor(loaded).predict(crop, box - np.array([c0, r0, c0, r0]), window=UNIT)
    np.testing.assert_array_equal(zoomed.refined_prob[r0:r1, c0:c1], local.refined_prob)
    assert not zoomed.refined_prob[:r0].any() and not zoomed.refined_prob[:, c1:].any()
    assert zoomed.refined_prob.shape == image.shape
    doubled = Predictor(loaded, zoom=True).predict(image, box, output_size=(256, 256))
    assert doubled.refined_prob.shape == (256, 256)
    assert dice(resize(doubled.refined_mask.astype(float), image.shape, order=1) > 0.5, zoomed.refined_mask) > 0.9


def test_predictive_uncertainty_is_the_ensemble_bernoulli_variance():
    from napari_imedsam.model.config import DecoderConfig
    from napari_imedsam.model.inr import mc_uncertainty

    logits = torch.randn(8, 2, 50, generator=torch.Generator().manual_seed(0)) * 3
    probs = torch.sigmoid(logits)
    epistemic = mc_uncertainty(logits, "epistemic")
    predictive = mc_uncertainty(logits, "predictive")
    assert torch.allclose(epistemic, probs.var(dim=0, unbiased=False))
    # law of total variance: p̄(1 - p̄) = mean of p(1 - p) + variance of p
    assert torch.allclose(predictive, (probs * (1 - probs)).mean(0) + epistemic, atol=1e-6)
    assert (predictive >= epistemic - 1e-7).all()
    with pytest.raises(ValueError, match="uncertainty must be one of"):
        DecoderConfig(uncertainty="entropy")


def test_clicks_change_the_mask_and_grow_the_box_without_re_encoding():
    from napari_imedsam.inference.boxes import box_with_clicks

    box = np.array([10.0, 10.0, 20.0, 20.0])
    grown = box_with_clicks(box, np.array([[30.0, 5.0, 1.0], [0.0, 0.0, 0.0]]), (64, 64))
    np.testing.assert_allclose(grown, [10.0, 2.0, 33.0, 20.0])  # the positive click, not the negative one
    np.testing.assert_allclose(box_with_clicks(box, None, (64, 64)), box)

    predictor = Predictor(untrained(), prompt_clicks=True)  # clicks also go to the prompt encoder
    image = np.random.default_rng(0).random((48, 48)).astype(np.float32)
    plain = predictor.predict(image, [8, 8, 30, 30], slice_index=0)
    misses = predictor.cache.misses
    clicked = predictor.predict(image, [8, 8, 30, 30], slice_index=0, points=np.array([[20.0, 20.0, 0.0]]))
    assert predictor.cache.misses == misses
    assert not np.allclose(plain.refined_prob, clicked.refined_prob)
    with pytest.raises(InputError, match="finite"):
        predictor.predict(image, [8, 8, 30, 30], points=np.array([[np.nan, 1.0, 1.0]]))

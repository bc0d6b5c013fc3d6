"""Clicks correct the mask where they land, along the image's edges, and nowhere else."""

import numpy as np
import pytest

from napari_imedsam._sample_data import CT_SAMPLES, load_ct_slice
from napari_imedsam.inference.clicks import correct_with_clicks, owner_of_click
from napari_imedsam.inference.predictor import Predictor
from napari_imedsam.model.registry import load_model


def two_blobs() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A bright square touching a second, slightly darker square, on a dark background; the model's
    probability covers only the first square."""
    image = np.full((64, 64), 0.1)
    image[16:40, 10:30] = 0.9
    image[20:36, 30:44] = 0.7
    truth = image > 0.5
    probability = np.zeros((64, 64), np.float32)
    probability[16:40, 10:30] = 0.95
    return image, probability, truth


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * (a & b).sum() / (a.sum() + b.sum())


def test_a_positive_click_adds_the_missed_region_up_to_its_edges_and_leaves_the_rest_alone():
    image, probability, truth = two_blobs()
    corrected = correct_with_clicks(probability, image, np.array([[37.0, 28.0, 1.0]]))
    mask = corrected > 0.5
    assert dice(probability > 0.5, truth) < 0.85 < 0.98 < dice(mask, truth)
    assert not mask[image < 0.5].any()  # the walker stopped at the darker background's edge
    far = np.ones_like(mask)
    far[28 - 20:28 + 21, 37 - 20:37 + 21] = False  # beyond the freed disk (2 x the click's depth): no unsure band here
    np.testing.assert_array_equal(corrected[far], probability[far])


def test_a_negative_click_removes_a_false_lobe():
    image, _, truth = two_blobs()
    probability = np.where(image > 0.5, 0.9, 0.05).astype(np.float32)
    probability[20:36, 30:44] = 0.8  # the model wrongly includes the darker square ...
    truth = image > 0.8  # ... which is not the object
    corrected = correct_with_clicks(probability, image, np.array([[38.0, 28.0, 0.0]]))
    assert dice(corrected > 0.5, truth) > 0.97 > dice(probability > 0.5, truth)


def test_clicks_that_agree_with_the_mask_or_none_change_nothing():
    image, probability, _ = two_blobs()
    agreeing = np.array([[20.0, 28.0, 1.0], [2.0, 2.0, 0.0]])
    np.testing.assert_array_equal(correct_with_clicks(probability, image, agreeing), probability)
    np.testing.assert_array_equal(correct_with_clicks(probability, image, None), probability)


def test_colour_images_and_clicks_at_the_border_work():
    image, probability, truth = two_blobs()
    rgb = np.stack([image, image * 0.5, 1 - image], axis=-1)
    corrected = correct_with_clicks(probability, rgb, np.array([[37.0, 28.0, 1.0], [63.9, 0.0, 0.0]]))
    assert dice(corrected > 0.5, truth) > 0.98


def test_the_correction_reads_only_the_windows_it_works_in():
    image, probability, _ = two_blobs()
    click = np.array([[37.0, 28.0, 1.0]])
    asked = []

    def read(window):
        asked.append(window)
        r0, r1, c0, c1 = window
        return image[r0:r1, c0:c1]

    np.testing.assert_array_equal(correct_with_clicks(probability, read, click),
                                  correct_with_clicks(probability, image, click))
    (r0, r1, c0, c1), = asked
    assert (r1 - r0) * (c1 - c0) < image.size
    with pytest.raises(ValueError, match="has shape"):
        correct_with_clicks(probability, lambda w: image[w[0]:w[1] - 1, w[2]:w[3]], click)


def test_clicks_apply_in_order_each_to_the_mask_the_earlier_ones_left():
    """A false lobe merged with the object: the second negative click is measured against what the
    first removed, so it frees a small neighbourhood, not most of the object."""
    image = np.full((80, 80), 0.1)
    image[20:50, 10:35] = 0.8  # the object
    image[20:50, 35:70] = 0.75  # a false lobe of nearly the same brightness, merged with it
    truth = np.zeros((80, 80), bool)
    truth[20:50, 10:35] = True
    probability = np.where(image > 0.5, 0.9, 0.05).astype(np.float32)
    clicks = np.array([[60.0, 35.0, 0.0], [40.0, 35.0, 0.0]])
    both = correct_with_clicks(probability, image, clicks)
    first = correct_with_clicks(probability, image, clicks[:1])
    np.testing.assert_array_equal(both, correct_with_clicks(first, image, clicks))
    assert dice(both > 0.5, truth) > 0.9 > dice(first > 0.5, truth) > dice(probability > 0.5, truth)
    assert (both > 0.5)[truth].mean() > 0.8  # the object survives (measured on the model's mask: Dice 0.72)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_the_predictor_applies_clicks_on_a_real_image_without_re_encoding():
    from napari_imedsam.inference.boxes import box_of_mask

    image, labels, names = load_ct_slice(CT_SAMPLES["ct_abdomen"])
    truth = labels == names.index("liver_000") + 1
    box = box_of_mask(truth)
    loaded = load_model("demo", device="cpu")
    predictor = Predictor(loaded, click_refiner=False)  # the walker alone: a correction where the click lands
    assert not predictor.prompt_clicks  # the bundled model was trained with boxes only
    plain = predictor.predict(image, box)
    mask = plain.refined_mask
    wrong = np.argwhere(truth & ~mask)
    row, col = wrong[len(wrong) // 2]
    click = np.array([[col, row, 1.0]])
    misses = predictor.cache.misses
    clicked = predictor.predict(image, box, points=click)
    assert predictor.cache.misses == misses  # the crop's embedding was reused
    assert clicked.refined_mask[row, col]
    assert dice(clicked.refined_mask, truth) >= dice(mask, truth)
    untouched = np.broadcast_to(np.abs(np.arange(image.shape[0])[:, None] - row) > 60, truth.shape)
    np.testing.assert_array_equal(clicked.refined_prob[untouched], plain.refined_prob[untouched])
    # normalising only the walker's window gives exactly what the whole normalised slice gives
    from napari_imedsam.inference.preprocess import normalize_intensity

    whole = correct_with_clicks(plain.refined_prob, normalize_intensity(image, None), click,
                                uncertainty=plain.uncertainty)  # without a refiner, the walker frees the doubtful band
    np.testing.assert_array_equal(clicked.refined_prob, whole)
    walked = correct_with_clicks(plain.refined_prob, normalize_intensity(image, None), click)  # what a refiner extends

    # with demo's click refiner (the default): the correction reaches along the mistake, within its window
    from napari_imedsam.inference.click_refine import refiner_window

    refined = Predictor(loaded).predict(image, box, points=click)
    assert refined.refined_mask[row, col] and dice(refined.refined_mask, truth) >= dice(clicked.refined_mask, truth)
    r0, r1, c0, c1 = refiner_window(box, click, truth.shape, loaded.click_refiner.config)
    outside = np.ones(truth.shape, bool)
    outside[r0:r1, c0:c1] = False
    np.testing.assert_array_equal(refined.refined_prob[outside], walked[outside])


def test_clicks_reach_the_prompt_encoder_only_for_weights_trained_with_them():
    from dataclasses import replace

    from napari_imedsam.model.checks import ConfigError, check_inference

    from .conftest import untrained

    loaded = untrained()
    assert not Predictor(loaded).prompt_clicks
    assert Predictor(replace(loaded, prompt_clicks=True)).prompt_clicks
    assert check_inference({"inference": {"prompt_clicks": True}})["prompt_clicks"] is True
    assert check_inference({}) == {} and check_inference({"inference": {}})["prompt_clicks"] is False
    with pytest.raises(ConfigError, match="prompt_clicks"):
        check_inference({"inference": {"prompt_clicks": "yes"}})


def test_click_depths_measured_near_the_mask_equal_those_over_the_whole_slice():
    from scipy import ndimage

    from napari_imedsam.inference.clicks import click_regions

    rng = np.random.default_rng(3)
    for _ in range(20):
        mask = np.zeros((90, 120), bool)
        r, c = rng.integers(5, 80), rng.integers(5, 110)
        mask[r:r + rng.integers(2, 30), c:c + rng.integers(2, 30)] = True
        mask &= rng.random(mask.shape) > 0.1  # holes: negative clicks have nearby background too
        points = np.column_stack([rng.uniform(0, 119, 6), rng.uniform(0, 89, 6), rng.integers(0, 2, 6)])
        to_object = ndimage.distance_transform_edt(~mask)
        to_background = ndimage.distance_transform_edt(mask)
        for region in click_regions(mask, points):
            expected = to_object if region.positive else to_background
            assert region.depth == pytest.approx(expected[region.row, region.col])


def test_a_click_goes_to_the_object_it_plainly_concerns_else_to_the_selected_one():
    labels = np.zeros((60, 100), np.int32)
    labels[10:30, 10:30] = 1  # object 1, box (8, 8, 32, 32)
    labels[10:30, 60:80] = 2  # object 2 (selected), box (58, 8, 82, 32)
    boxes = {1: np.array([8.0, 8, 32, 32]), 2: np.array([58.0, 8, 82, 32])}
    # a negative click on object 1's mask: object 1 covers too much there
    assert owner_of_click(labels, boxes, 20, 20, positive=False, selected=2) == 1
    # a positive click in object 1's box where its mask misses
    assert owner_of_click(labels, boxes, 31, 31, positive=True, selected=2) == 1
    # a positive click on object 1's mask asks the selected object to take it
    assert owner_of_click(labels, boxes, 20, 20, positive=True, selected=2) == 2
    # in the selected object's box, on its mask, or in no box at all: the selected object
    assert owner_of_click(labels, boxes, 81, 31, positive=False, selected=2) == 2
    assert owner_of_click(labels, boxes, 70, 20, positive=False, selected=2) == 2
    assert owner_of_click(labels, boxes, 45, 50, positive=True, selected=2) == 2
    # in two other objects' overlapping boxes: no plain owner, the selected object
    boxes[3] = np.array([20.0, 20, 40, 40])
    assert owner_of_click(labels, boxes, 31, 31, positive=True, selected=2) == 2


def test_without_a_refiner_a_click_frees_the_doubtful_band_it_lands_in():
    """A long strip of object the model missed, where it was unsure: one positive click at one end
    corrects the whole strip when the uncertainty is given, only the click's neighbourhood without it.
    Certain pixels are never freed beyond the click's own neighbourhood."""
    image = np.full((60, 120), 0.1)
    image[20:40, 10:90] = 0.9
    truth = image > 0.5
    probability = np.zeros(image.shape, np.float32)
    probability[20:40, 10:60] = 0.95  # the model stopped short
    uncertainty = np.zeros(image.shape, np.float32)
    uncertainty[18:42, 58:90] = 0.2  # and doubted the rest
    click = np.array([[66.0, 30.0, 1.0]])  # 7 px into the miss: frees 14 px around it, the band up to 28 px away
    local = correct_with_clicks(probability, image, click) > 0.5
    banded = correct_with_clicks(probability, image, click, uncertainty=uncertainty) > 0.5
    assert dice(banded, truth) > 0.97 and dice(banded, truth) > dice(local, truth) + 0.1
    assert not banded[:, 92:].any() and not banded[:15].any()  # nothing certain, outside the band, was touched
    certain = correct_with_clicks(probability, image, click, uncertainty=np.zeros_like(uncertainty)) > 0.5
    np.testing.assert_array_equal(certain, local)  # no doubt: exactly the walker's local correction

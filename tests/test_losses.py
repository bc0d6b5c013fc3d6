"""Losses on known inputs, and the query-point sampler."""

from __future__ import annotations

import math

import numpy as np
import torch

from src_train.losses import bce_dice_loss, coarse_fine_weights, dice_loss
from src_train.points import box_of_mask, jitter_box, sample_points


def test_dice_and_bce_on_known_values():
    targets = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    confident = torch.tensor([[50.0, 50.0, -50.0, -50.0]])
    assert float(dice_loss(confident, targets)) < 1e-6
    zero = torch.zeros(1, 4)  # p = 0.5 everywhere: BCE = ln 2, Dice = 1 - (2*1 + 1) / (2 + 2 + 1)
    expected = 0.5 * math.log(2) + 0.5 * (1 - 3 / 5)
    assert abs(float(bce_dice_loss(zero, targets)) - expected) < 1e-6


def test_supervision_moves_from_coarse_to_fine():
    assert coarse_fine_weights(0.0) == (0.8, 0.2)
    w_coarse, w_fine = coarse_fine_weights(1.0)
    assert abs(w_coarse - 0.2) < 1e-9 and abs(w_fine - 0.8) < 1e-9


def test_points_sample_region_and_boundary_with_exact_labels():
    mask = np.zeros((64, 64), bool)
    mask[20:40, 10:30] = True
    box = box_of_mask(mask)
    np.testing.assert_array_equal(box, [10, 20, 29, 39])
    rng = np.random.default_rng(0)
    rc, labels = sample_points(mask, (15, 45, 5, 35), 2000, 0.5, rng)
    assert rc.shape == (2000, 2) and labels.shape == (2000,)
    assert rc[:, 0].min() >= 14.5 and rc[:, 0].max() < 44.5
    nearest = mask[np.rint(rc[:, 0]).astype(int), np.rint(rc[:, 1]).astype(int)]
    np.testing.assert_array_equal(labels, nearest)
    boundary = rc[1000:]
    near_edge = np.minimum.reduce([np.abs(boundary[:, 0] - 19.5), np.abs(boundary[:, 0] - 39.5),
                                   np.abs(boundary[:, 1] - 9.5), np.abs(boundary[:, 1] - 29.5)])
    assert np.median(near_edge) < 3
    jittered = jitter_box(box, mask.shape, rng)
    assert (jittered[:2] <= box[:2]).all() and (jittered[2:] >= box[2:]).all()


def test_augmentation_keeps_mask_and_box_together():
    from napari_imedsam.inference.preprocess import box_of_mask
    from src_train.augment import augment

    rng = np.random.default_rng(0)
    mask = np.zeros((30, 40), bool)
    mask[3:9, 5:20] = True
    image = np.zeros((30, 40, 3), np.float32)
    image[mask] = 1.0
    seen_shapes = set()
    for _ in range(40):
        out, out_mask, box = augment(image, mask, box_of_mask(mask), rng)
        np.testing.assert_array_equal(box, box_of_mask(out_mask))  # the box follows the mask exactly
        assert out_mask.sum() == mask.sum() and 0.0 <= out.min() and out.max() <= 1.0
        assert out[out_mask].mean() > out[~out_mask].mean()  # the object stays where the mask says
        seen_shapes.add(out_mask.shape)
    assert seen_shapes == {(30, 40), (40, 30)}  # 90° turns happen


def test_baselines_and_uncertainty_auroc_on_known_inputs():
    from napari_imedsam.baselines import box_mask, grabcut_mask, uncertainty_auroc
    from napari_imedsam.evaluation import dice
    from napari_imedsam.io.phantoms import ellipse_phantoms

    box = box_mask((10, 12), np.array([2.0, 3.0, 5.0, 7.0]))
    assert box.sum() == 4 * 5 and box[3, 2] and box[7, 5] and not box[8, 5]
    image, mask = ellipse_phantoms(1, size=96, seed=2)[0]
    assert dice(grabcut_mask(image, box_of_mask(mask)), mask) > 0.85  # high-contrast phantom: easy for GrabCut
    errors = np.array([0, 0, 1, 1], bool)
    assert uncertainty_auroc(np.array([0.1, 0.2, 0.8, 0.9]), errors) == 1.0
    assert uncertainty_auroc(np.array([0.9, 0.8, 0.2, 0.1]), errors) == 0.0
    assert uncertainty_auroc(np.array([0.5, 0.5, 0.5, 0.5]), errors) == 0.5
    assert np.isnan(uncertainty_auroc(np.ones(4), np.zeros(4, bool)))


def test_time_budget_drives_progress_and_the_cosine_schedule():
    from src_train.loop import cosine_factor, run_progress

    assert run_progress(10, 100_000, 0.0, None) < 1e-3  # step-driven: barely started
    assert run_progress(10, 100_000, 30.0, 60.0) == 0.5  # a time budget ends the run sooner
    assert run_progress(99, 100, 10.0, 1e9) == 1.0
    assert cosine_factor(0.0) == 1.0 and abs(cosine_factor(1.0) - 0.1) < 1e-12
    assert abs(cosine_factor(0.5) - 0.55) < 1e-12

"""CT-like training scenes: deterministic, and every target is exactly one structure's visible pixels."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from src_train.scenes import ct_scene, scene_targets, star_shape


def test_scene_is_deterministic_for_a_seed():
    a = ct_scene(128, np.random.default_rng(3))
    b = ct_scene(128, np.random.default_rng(3))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]
    image, labels, kinds = a
    assert image.dtype == np.uint8 and image.shape == labels.shape == (128, 128)
    assert kinds[0] == "background" and kinds[1] == "body" and labels.max() < len(kinds)


def test_targets_are_single_objects_of_one_structure_inside_the_body():
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(20):
        image, labels, kinds = ct_scene(160, rng)
        targets = scene_targets(labels, kinds, rng, n=3)
        assert targets, "every scene offers at least one target"
        for i, (kind, mask) in enumerate(targets):
            seen.add(kind)
            values = np.unique(labels[mask])
            assert values.size == 1 and kinds[values[0]] == kind  # one structure, the kind it claims
            assert ndimage.label(mask)[1] == 1 and mask.sum() >= 30  # one connected object
            assert not (mask & (labels == 0)).any()
            for _, other in targets[i + 1:]:
                assert not (mask & other).any()
    assert {"organ", "lung", "lung_lobe", "bone", "ring", "pool", "muscle"} <= seen


def test_star_shape_fills_its_radii():
    mask = star_shape((100, 100), (50.0, 50.0), (20.0, 30.0), np.random.default_rng(0), irregularity=0.0,
                      rotation=0.0)
    rows, cols = np.nonzero(mask)
    assert abs(np.ptp(rows) - 40) <= 2 and abs(np.ptp(cols) - 60) <= 2
    assert abs(mask.sum() - np.pi * 20 * 30) / (np.pi * 20 * 30) < 0.03

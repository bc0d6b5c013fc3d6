"""Augmentation for training with the encoder in the loop: geometry (flips, 90° turns) and intensity
(grey conversion, contrast, brightness, gamma), so a model learns "the object in the box", not one
dataset's look. Works on normalised (h, w, 3) images in [0, 1]; masks and boxes follow exactly."""

from __future__ import annotations

import numpy as np

from napari_imedsam.inference.preprocess import box_from_corners_rc, box_to_corners_rc


def _transform_box(box_xyxy: np.ndarray, shape_hw: tuple[int, int], flip_rows: bool, flip_cols: bool,
                   turns: int) -> np.ndarray:
    height, width = shape_hw
    corners = box_to_corners_rc(box_xyxy)
    if flip_rows:
        corners[:, 0] = height - 1 - corners[:, 0]
    if flip_cols:
        corners[:, 1] = width - 1 - corners[:, 1]
    for _ in range(turns):  # np.rot90 (counter-clockwise): (r, c) -> (W - 1 - c, r)
        corners = np.stack([width - 1 - corners[:, 1], corners[:, 0]], axis=1)
        height, width = width, height
    return box_from_corners_rc(corners)


def augment(image01: np.ndarray, mask: np.ndarray, box_xyxy: np.ndarray, rng: np.random.Generator
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    flip_rows, flip_cols, turns = bool(rng.random() < 0.5), bool(rng.random() < 0.5), int(rng.integers(0, 4))
    box = _transform_box(box_xyxy, mask.shape, flip_rows, flip_cols, turns)
    if flip_rows:
        image01, mask = image01[::-1], mask[::-1]
    if flip_cols:
        image01, mask = image01[:, ::-1], mask[:, ::-1]
    image01, mask = np.rot90(image01, turns), np.rot90(mask, turns)
    image = np.ascontiguousarray(image01, dtype=np.float32)
    if rng.random() < 0.3:
        image = np.repeat(image.mean(axis=-1, keepdims=True), 3, axis=-1)
    contrast, brightness = rng.uniform(0.7, 1.3), rng.uniform(-0.1, 0.1)
    image = (image - 0.5) * contrast + 0.5 + brightness
    image = np.clip(image, 0.0, 1.0) ** rng.uniform(0.7, 1.4)
    return image.astype(np.float32), np.ascontiguousarray(mask), box

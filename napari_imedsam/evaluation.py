"""Evaluation: segmentation metrics (Dice, IoU, HD95 = 95th percentile symmetric Hausdorff distance)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def dice(prediction: np.ndarray, truth: np.ndarray) -> float:
    """2|A∩B| / (|A| + |B|); 1.0 when both are empty."""
    a, b = prediction.astype(bool), truth.astype(bool)
    total = int(a.sum() + b.sum())
    return 1.0 if total == 0 else 2.0 * float((a & b).sum()) / total


def iou(prediction: np.ndarray, truth: np.ndarray) -> float:
    a, b = prediction.astype(bool), truth.astype(bool)
    union = int((a | b).sum())
    return 1.0 if union == 0 else float((a & b).sum()) / union


def hd95(prediction: np.ndarray, truth: np.ndarray, spacing: tuple[float, ...] | None = None) -> float:
    """95th percentile of the surface-to-surface distances, both ways (pixels, or mm with spacing).

    0 when both masks are empty; inf when exactly one is.
    """
    a, b = prediction.astype(bool), truth.astype(bool)
    if not a.any() and not b.any():
        return 0.0
    if not a.any() or not b.any():
        return float("inf")
    surface_a = a ^ ndimage.binary_erosion(a)
    surface_b = b ^ ndimage.binary_erosion(b)
    to_b = ndimage.distance_transform_edt(~surface_b, sampling=spacing)
    to_a = ndimage.distance_transform_edt(~surface_a, sampling=spacing)
    distances = np.concatenate([to_b[surface_a], to_a[surface_b]])
    return float(np.percentile(distances, 95))


def next_click(prediction: np.ndarray, truth: np.ndarray) -> tuple[int, int, bool] | None:
    """Where a user clicks next to fix `prediction`: the centre of the largest error region.

    The largest connected region of missed object (positive click) or false alarm (negative click);
    its centre is the pixel farthest from the region's border (so it lies inside even for a ring).
    Returns (row, col, positive), or None when the prediction is already right.
    """
    prediction, truth = np.asarray(prediction, bool), np.asarray(truth, bool)
    best: tuple[int, np.ndarray, bool] | None = None
    for errors, positive in ((truth & ~prediction, True), (prediction & ~truth, False)):
        regions, count = ndimage.label(errors)
        if not count:
            continue
        sizes = np.bincount(regions.ravel())[1:]
        largest = int(np.argmax(sizes)) + 1
        if best is None or sizes[largest - 1] > best[0]:
            best = (int(sizes[largest - 1]), regions == largest, positive)
    if best is None:
        return None
    inside = np.pad(best[1], 1)
    depth = ndimage.distance_transform_edt(inside)[1:-1, 1:-1]
    row, col = np.unravel_index(int(np.argmax(depth)), depth.shape)
    return int(row), int(col), best[2]

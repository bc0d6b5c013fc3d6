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

"""Query points for INR training: uniform over the box region plus a band around the mask boundary."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from napari_imedsam.inference.preprocess import box_of_mask

__all__ = ["box_of_mask", "jitter_box", "sample_points"]


def sample_points(mask: np.ndarray, region: tuple[int, int, int, int], n_points: int,
                  boundary_fraction: float, rng: np.random.Generator, jitter: float = 2.0
                  ) -> tuple[np.ndarray, np.ndarray]:
    """`n_points` (row, col) positions in pixel units (centres at integers) and their 0/1 labels.

    A `boundary_fraction` of them lies near the mask boundary (boundary pixels + Gaussian jitter),
    the rest uniformly over `region`. Labels are the mask at the nearest pixel.
    """
    r0, r1, c0, c1 = region
    n_boundary = int(round(n_points * boundary_fraction))
    edge = mask ^ ndimage.binary_erosion(mask)
    edge_rc = np.argwhere(edge[r0:r1, c0:c1]) + [r0, c0]
    if len(edge_rc) == 0:
        n_boundary = 0
    n_uniform = n_points - n_boundary
    rows = rng.uniform(r0 - 0.5, r1 - 0.5, n_uniform)
    cols = rng.uniform(c0 - 0.5, c1 - 0.5, n_uniform)
    if n_boundary:
        picks = edge_rc[rng.integers(0, len(edge_rc), n_boundary)]
        rows = np.concatenate([rows, picks[:, 0] + rng.normal(0.0, jitter, n_boundary)])
        cols = np.concatenate([cols, picks[:, 1] + rng.normal(0.0, jitter, n_boundary)])
    rows = np.clip(rows, r0 - 0.5, r1 - 0.5 - 1e-6)
    cols = np.clip(cols, c0 - 0.5, c1 - 0.5 - 1e-6)
    labels = mask[np.clip(np.rint(rows).astype(int), 0, mask.shape[0] - 1),
                  np.clip(np.rint(cols).astype(int), 0, mask.shape[1] - 1)]
    return np.stack([rows, cols], axis=-1), labels.astype(np.float32)


def jitter_box(box_xyxy: np.ndarray, shape_hw: tuple[int, int], rng: np.random.Generator,
               max_fraction: float = 0.05) -> np.ndarray:
    """Push each side out by a random 0..max_fraction of the image size (training-time box noise)."""
    height, width = shape_hw
    push = rng.uniform(0.0, max_fraction, 4) * np.array([width, height, width, height])
    x0, y0, x1, y1 = box_xyxy
    return np.array([max(0.0, x0 - push[0]), max(0.0, y0 - push[1]),
                     min(width - 1.0, x1 + push[2]), min(height - 1.0, y1 + push[3])])

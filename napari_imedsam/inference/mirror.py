"""Mirror test-time augmentation: a box predicted on the slice and on its three mirror images, the
maps flipped back and averaged (nnU-Net predicts with mirroring by default for the same reason: the
network's errors are not mirror-symmetric, so they partly cancel). Four decodes and, with zoom, four
crop encodings per box: for batch work (`imedsam predict / evaluate --mirror`), not the live dock."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np

# (flip rows, flip columns) of each pass; the first is the slice as it is
MIRRORS = ((False, False), (False, True), (True, False), (True, True))


def flip_map(array: np.ndarray, rows: bool, cols: bool) -> np.ndarray:
    """`array` (H, W, ...) mirrored top-bottom (`rows`) and / or left-right (`cols`), contiguous."""
    if rows:
        array = array[::-1]
    if cols:
        array = array[:, ::-1]
    return np.ascontiguousarray(array)


def flip_box(box_xyxy: np.ndarray, shape_hw: tuple[int, int], rows: bool, cols: bool) -> np.ndarray:
    """A box (x0, y0, x1, y1, pixel centres) in the mirrored image of a slice of `shape_hw`."""
    height, width = shape_hw
    x0, y0, x1, y1 = np.asarray(box_xyxy, dtype=np.float64)
    if cols:
        x0, x1 = width - 1 - x1, width - 1 - x0
    if rows:
        y0, y1 = height - 1 - y1, height - 1 - y0
    return np.array([x0, y0, x1, y1])


def flip_points(points: np.ndarray | None, shape_hw: tuple[int, int], rows: bool, cols: bool) -> np.ndarray | None:
    """Clicks (N, 3) rows of (x, y, positive) in the mirrored image."""
    if points is None:
        return None
    height, width = shape_hw
    flipped = np.array(points, dtype=np.float64)
    if cols:
        flipped[:, 0] = width - 1 - flipped[:, 0]
    if rows:
        flipped[:, 1] = height - 1 - flipped[:, 1]
    return flipped


def flip_roi(roi: tuple[int, int, int, int], shape_hw: tuple[int, int], rows: bool, cols: bool
             ) -> tuple[int, int, int, int]:
    """A half-open (row0, row1, col0, col1) region mirrored back onto the slice's grid."""
    r0, r1, c0, c1 = roi
    height, width = shape_hw
    if rows:
        r0, r1 = height - r1, height - r0
    if cols:
        c0, c1 = width - c1, width - c0
    return r0, r1, c0, c1


def mirrored(predict_box: Callable, image: np.ndarray, box: np.ndarray, points: np.ndarray | None):
    """`predict_box(image, box, points) -> Prediction` on the slice and its three mirrors; the mean of
    the coarse, uncertainty and refined maps (flipped back), the union of the decoded regions, the
    original box. The result has the type and size of one pass."""
    shape = image.shape[:2]
    results = []
    for rows, cols in MIRRORS:
        result = predict_box(flip_map(image, rows, cols), flip_box(box, shape, rows, cols),
                             flip_points(points, shape, rows, cols))
        out_hw = result.refined_prob.shape
        results.append(replace(result, coarse_prob=flip_map(result.coarse_prob, rows, cols),
                               uncertainty=flip_map(result.uncertainty, rows, cols),
                               refined_prob=flip_map(result.refined_prob, rows, cols),
                               roi=flip_roi(result.roi, out_hw, rows, cols)))
    rois = np.array([r.roi for r in results])
    return replace(results[0],
                   coarse_prob=np.mean([r.coarse_prob for r in results], axis=0, dtype=np.float32),
                   uncertainty=np.mean([r.uncertainty for r in results], axis=0, dtype=np.float32),
                   refined_prob=np.mean([r.refined_prob for r in results], axis=0, dtype=np.float32),
                   roi=(int(rois[:, 0].min()), int(rois[:, 1].max()), int(rois[:, 2].min()), int(rois[:, 3].max())),
                   n_coarse_exact=sum(r.n_coarse_exact for r in results),
                   n_refined=sum(r.n_refined for r in results))

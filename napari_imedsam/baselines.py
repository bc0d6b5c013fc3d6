"""Reference segmenters for a box, measured next to the model: the box itself, and GrabCut (OpenCV)."""

from __future__ import annotations

import numpy as np

from .inference.preprocess import normalize_intensity


def box_mask(shape_hw: tuple[int, int], box_xyxy: np.ndarray) -> np.ndarray:
    """The filled box (pixel centres inside it)."""
    x0, y0, x1, y1 = box_xyxy
    rows, cols = np.arange(shape_hw[0])[:, None], np.arange(shape_hw[1])[None, :]
    return (rows >= y0) & (rows <= y1) & (cols >= x0) & (cols <= x1)


def grabcut_mask(image: np.ndarray, box_xyxy: np.ndarray, iterations: int = 5) -> np.ndarray:
    """OpenCV GrabCut initialised with the box (outside = background), on the normalised slice."""
    import cv2

    rgb = (normalize_intensity(image) * 255).astype(np.uint8)
    x0, y0, x1, y1 = (int(round(v)) for v in box_xyxy)
    rect = (x0, y0, max(1, x1 - x0 + 1), max(1, y1 - y0 + 1))
    mask = np.zeros(rgb.shape[:2], np.uint8)
    background, foreground = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    try:
        cv2.grabCut(np.ascontiguousarray(rgb[..., ::-1]), mask, rect, background, foreground, iterations,
                    cv2.GC_INIT_WITH_RECT)
    except cv2.error:  # degenerate boxes (e.g. no background colour model): fall back to the box
        return box_mask(rgb.shape[:2], box_xyxy)
    return (mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD)


def uncertainty_auroc(uncertainty: np.ndarray, errors: np.ndarray) -> float:
    """AUROC of uncertainty as a detector of wrong pixels (Mann-Whitney U); NaN without both classes."""
    from scipy.stats import rankdata

    errors = errors.astype(bool).ravel()
    n_pos, n_neg = int(errors.sum()), int((~errors).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(uncertainty.ravel())
    return float((ranks[errors].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))

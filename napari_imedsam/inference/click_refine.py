"""The click refiner on one prediction: its maps around the box and the clicks, and its correction
pasted back at full resolution (the network itself: `model/click_refiner.py`).

The same functions build the refiner's training examples (`src_train/click_refiner.py`) and run it
after each click in the predictor, so what it learned from is exactly what it meets.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Protocol

import numpy as np
import torch
from torch.nn import functional as F

from ..model.click_refiner import ClickRefiner, ClickRefinerConfig

Window = tuple[int, int, int, int]  # (row0, row1, col0, col1), half-open


class RegionMargins(Protocol):
    """What sizes a second stage's region (the click refiner's and the corrector's configs)."""

    margin: float
    pad: float


LOGIT_CLIP = 1e-3  # probabilities are clipped to [p, 1 - p] before the logit: a refiner can flip any pixel


def refiner_window(box: np.ndarray, points: np.ndarray, shape: tuple[int, int], config: RegionMargins) -> Window:
    """The region a second stage reads and corrects: the box (x0, y0, x1, y1) and every click, grown by
    the config's margin and pad."""
    x0, y0, x1, y1 = (float(v) for v in np.asarray(box, dtype=np.float64).reshape(4))
    points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    cols, rows = [x0, x1, *points[:, 0]], [y0, y1, *points[:, 1]]
    margin = config.margin * max(max(cols) - min(cols), max(rows) - min(rows)) + config.pad
    height, width = shape
    return (max(0, math.floor(min(rows) - margin)), min(height, math.ceil(max(rows) + margin + 1)),
            max(0, math.floor(min(cols) - margin)), min(width, math.ceil(max(cols) + margin + 1)))


def _resampled(array: np.ndarray, size: int) -> torch.Tensor:
    """(h, w) or (h, w, C) -> (C, size, size), bilinear."""
    tensor = torch.as_tensor(np.ascontiguousarray(array, dtype=np.float32))
    tensor = tensor[None] if tensor.ndim == 2 else tensor.permute(2, 0, 1)
    return F.interpolate(tensor[None], size=(size, size), mode="bilinear", align_corners=False)[0]


def click_blobs(points: np.ndarray, window: Window, config: ClickRefinerConfig) -> torch.Tensor:
    """(2, size, size): a Gaussian blob at each positive click (channel 0) and negative click (1)."""
    r0, r1, c0, c1 = window
    size = config.size
    scale_y, scale_x = size / (r1 - r0), size / (c1 - c0)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    blobs = np.zeros((2, size, size), np.float32)
    for x, y, label in np.asarray(points, dtype=np.float64).reshape(-1, 3):
        cy, cx = (y + 0.5 - r0) * scale_y, (x + 0.5 - c0) * scale_x
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * config.blob_sigma ** 2))
        channel = blobs[0 if label > 0 else 1]
        np.maximum(channel, blob, out=channel)
    return torch.from_numpy(blobs)


def refiner_maps(image01: np.ndarray, box_prob: np.ndarray, walked: np.ndarray, uncertainty: np.ndarray | None,
                 points: np.ndarray, window: Window, config: ClickRefinerConfig) -> torch.Tensor:
    """The refiner's input (CHANNELS, size, size) over `window`; `image01` is the window's (h, w, 3)
    image in [0, 1], the other maps are full-slice (H, W)."""
    r0, r1, c0, c1 = window
    image01 = np.asarray(image01, dtype=np.float32)
    if image01.ndim == 2:
        image01 = np.repeat(image01[..., None], 3, axis=-1)
    doubt = np.zeros((r1 - r0, c1 - c0), np.float32) if uncertainty is None else uncertainty[r0:r1, c0:c1]
    return torch.cat([_resampled(image01[..., :3], config.size), _resampled(box_prob[r0:r1, c0:c1], config.size),
                      _resampled(walked[r0:r1, c0:c1], config.size), _resampled(doubt, config.size),
                      click_blobs(points, window, config)])


def logit(probability: np.ndarray | torch.Tensor):
    """The logit of a probability clipped to [LOGIT_CLIP, 1 - LOGIT_CLIP] (numpy or torch)."""
    if isinstance(probability, torch.Tensor):
        clipped = probability.clamp(LOGIT_CLIP, 1 - LOGIT_CLIP)
        return torch.log(clipped / (1 - clipped))
    clipped = np.clip(probability, LOGIT_CLIP, 1 - LOGIT_CLIP)
    return np.log(clipped / (1 - clipped))


def refine_after_click(refiner: ClickRefiner, walked: np.ndarray, box_prob: np.ndarray,
                       uncertainty: np.ndarray | None, read: Callable[[Window], np.ndarray],
                       box: np.ndarray, points: np.ndarray) -> np.ndarray:
    """`walked` (the probability after the clicks' walker step) with the refiner's correction added to
    its logit inside the refiner's window; unchanged outside it."""
    window = refiner_window(box, points, walked.shape, refiner.config)
    r0, r1, c0, c1 = window
    maps = refiner_maps(read(window), box_prob, walked, uncertainty, points, window, refiner.config)
    with torch.no_grad():
        delta = refiner.flip_averaged(maps[None].to(next(refiner.parameters()).device)).float().cpu()
        delta = F.interpolate(delta, size=(r1 - r0, c1 - c0), mode="bilinear", align_corners=False)[0, 0].numpy()
    refined = walked.copy()
    refined[r0:r1, c0:c1] = 1.0 / (1.0 + np.exp(-(logit(walked[r0:r1, c0:c1]) + delta)))
    return refined.astype(np.float32)

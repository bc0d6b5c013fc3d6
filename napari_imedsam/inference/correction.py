"""The Dual False Corrector on a Prediction: suggestions to remove (false positives) and to add
(false negatives) around its box, as connected regions a user can accept one by one."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ..model.corrector import Correction, DualFalseCorrector, correct, stack_maps
from .click_refine import refiner_window
from .predictor import Prediction
from .windows import IntensityWindow, as_2d_image, intensity_range


@dataclass
class Suggestions:
    """Corrector output at the prediction's output size: the corrected mask and the regions it changes."""

    corrected_mask: np.ndarray  # bool (H, W)
    remove: np.ndarray  # int32 (H, W): 0, or the id of a region to flip to background
    add: np.ndarray  # int32 (H, W): 0, or the id of a region to flip to foreground
    correction: Correction  # region-sized details (flip probabilities)

    @property
    def count(self) -> int:
        return int(self.remove.max()) + int(self.add.max())


def region_maps(prediction: Prediction, image: np.ndarray, window: IntensityWindow | None,
                region: tuple[int, int, int, int]) -> np.ndarray:
    """The corrector's stacked input over `region` (row0, row1, col0, col1) of the prediction's output grid."""
    r0, r1, c0, c1 = region
    out_h, out_w = prediction.refined_prob.shape
    crop = (slice(r0, r1), slice(c0, c1))
    image = as_2d_image(image)
    # the window resolved on the whole slice, as the model read it (the predictor's, when it resolved it)
    resolved = prediction.intensity or intensity_range(image, window)
    if image.shape[:2] == (out_h, out_w):
        image01 = resolved.apply(image[crop])  # only the region is normalised
    else:
        from skimage.transform import resize

        image01 = resize(resolved.apply(image), (out_h, out_w, 3), order=1, anti_aliasing=True)[crop]
    x0, y0, x1, y1 = prediction.box_xyxy
    rows, cols = np.arange(r0, r1)[:, None], np.arange(c0, c1)[None, :]
    inside = ((rows >= y0) & (rows <= y1) & (cols >= x0) & (cols <= x1)).astype(np.float32)
    return stack_maps(image01, prediction.refined_prob[crop], prediction.uncertainty[crop], inside)


def corrector_region(corrector: DualFalseCorrector, prediction: Prediction) -> tuple[int, int, int, int]:
    """The region the corrector reads and may change: the prediction's box, grown as its config says."""
    return refiner_window(prediction.box_xyxy, np.zeros((0, 3)), prediction.refined_prob.shape, corrector.config)


def suggest(corrector: DualFalseCorrector, prediction: Prediction, image: np.ndarray,
            window: IntensityWindow | None = None, min_area: int = 4) -> Suggestions:
    """Run the corrector on one prediction; regions smaller than `min_area` pixels are dropped."""
    shape = prediction.refined_prob.shape
    refined = prediction.refined_mask
    r0, r1, c0, c1 = region = corrector_region(corrector, prediction)
    if r1 <= r0 or c1 <= c0:
        empty = np.zeros(shape, np.int32)
        return Suggestions(refined.copy(), empty, empty.copy(), None)
    correction = correct(corrector, region_maps(prediction, image, window, region),
                         prediction.uncertainty[r0:r1, c0:c1])
    maps = []
    for flips in (correction.remove, correction.add):
        regions, count = ndimage.label(flips, structure=np.ones((3, 3)))
        if count:
            sizes = np.bincount(regions.ravel())
            keep = np.nonzero(sizes >= min_area)[0]
            keep = keep[keep > 0]
            relabel = np.zeros(count + 1, np.int32)
            relabel[keep] = np.arange(1, keep.size + 1)
            regions = relabel[regions]
        full = np.zeros(shape, np.int32)
        full[r0:r1, c0:c1] = regions
        maps.append(full)
    corrected = (refined & (maps[0] == 0)) | (maps[1] > 0)
    return Suggestions(corrected, maps[0], maps[1], correction)

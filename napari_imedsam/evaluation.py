"""Evaluation: segmentation metrics (Dice, IoU, HD95 = 95th percentile symmetric Hausdorff distance),
the simulated user's next click, and `evaluate`: a predictor on one box per sample, with baselines."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

import numpy as np
from scipy import ndimage

if TYPE_CHECKING:
    from .inference.predictor import Predictor
    from .inference.windows import IntensityWindow


class BoxSample(Protocol):
    """What `evaluate` reads from a sample (src_train.data.Sample is one)."""

    name: str
    image: np.ndarray
    mask: np.ndarray
    box_xyxy: np.ndarray
    window: IntensityWindow | None


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


def precision_recall(prediction: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """(|A∩B| / |A|, |A∩B| / |B|); 1.0 for an empty denominator."""
    a, b = prediction.astype(bool), truth.astype(bool)
    both = float((a & b).sum())
    return (both / a.sum() if a.any() else 1.0), (both / b.sum() if b.any() else 1.0)


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


def click_summary(curves: Sequence[Sequence[float]], max_clicks: int, prefix: str = "",
                  reported: tuple[int, ...] = (0, 1, 3, 5)) -> dict:
    """Interactive metrics from per-image Dice curves (Dice after 0, 1, ... clicks): mean Dice after
    the `reported` click counts (`dice_at_clicks`) and NoC@85 / NoC@90, the mean number of clicks to
    reach that Dice (`max_clicks` for an image that never does)."""
    curves_arr = np.asarray(curves, dtype=np.float64)
    out: dict = {f"{prefix}dice_at_clicks": {str(k): round(float(curves_arr[:, k].mean()), 4)
                                             for k in reported if k < curves_arr.shape[1]}}
    for target in (85, 90):
        clicks = [next((k for k, d in enumerate(curve) if d >= target / 100), max_clicks) for curve in curves]
        out[f"{prefix}noc{target}"] = round(float(np.mean(clicks)), 3)
    return out


def evaluate(predictor: Predictor, samples: Sequence[BoxSample], output_size: tuple[int, int] | None = None,
             baselines: bool = False, corrector=None) -> dict:
    """Mean Dice / IoU / HD95 with one box per sample, plus per-sample rows. Also: the coarse INR's
    Dice, the AUROC of uncertainty for the refined mask's wrong pixels inside the box region, and
    with `baselines` the box-as-mask, GrabCut and the backbone's own SAM mask decoder Dice / HD95 on the
    same boxes. With a Dual False `corrector`: the corrected mask's Dice (`corrected_dice`) and the
    precision / recall before and after it (each branch's effect: removals raise precision,
    additions recall)."""
    from .baselines import box_mask, grabcut_mask, uncertainty_auroc

    rows = []
    for sample in samples:
        truth = sample.mask
        result = predictor.predict(sample.image, sample.box_xyxy, output_size=output_size, window=sample.window)
        if output_size is not None and output_size != truth.shape:
            from skimage.transform import resize

            truth = resize(truth.astype(np.float32), output_size, order=1) > 0.5
        prediction = result.refined_mask
        r0, r1, c0, c1 = result.roi
        errors = (prediction != truth)[r0:r1, c0:c1]
        row = {"name": sample.name, "dice": dice(prediction, truth), "iou": iou(prediction, truth),
               "hd95": hd95(prediction, truth), "coarse_dice": dice(result.coarse_prob > 0.5, truth),
               "uncertainty_auroc": uncertainty_auroc(result.uncertainty[r0:r1, c0:c1], errors)}
        if baselines:
            box = box_mask(sample.mask.shape, sample.box_xyxy)
            grab = grabcut_mask(sample.image, sample.box_xyxy)
            # The backbone's own mask decoder (zero-shot LiteMedSAM for `lite`) on the whole-slice embedding.
            sam = predictor.sam_probability(predictor.embed(sample.image, sample.window), sample.box_xyxy,
                                           truth.shape) > 0.5
            row.update(box_dice=dice(box, sample.mask), box_hd95=hd95(box, sample.mask),
                       grabcut_dice=dice(grab, sample.mask), grabcut_hd95=hd95(grab, sample.mask),
                       sam_dice=dice(sam, truth), sam_hd95=hd95(sam, truth))
        if corrector is not None:
            from .inference.correction import suggest

            corrected = suggest(corrector, result, sample.image, sample.window).corrected_mask
            (p0, r0_), (p1, r1_) = precision_recall(prediction, truth), precision_recall(corrected, truth)
            row.update(corrected_dice=dice(corrected, truth), precision=p0, recall=r0_, corrected_precision=p1,
                       corrected_recall=r1_)
        rows.append(row)
    summary: dict = {"n": len(rows), "rows": rows}
    for key in rows[0] if rows else ():
        if key == "name":
            continue
        values = [r[key] for r in rows if math.isfinite(r[key])]
        summary[key] = float(np.mean(values)) if values else float("nan")
    return summary

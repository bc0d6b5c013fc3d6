"""Clicks that fix a mask where they land: an edge-aware, local correction of the model's output.

A click says "this pixel is object" (positive) or "this pixel is background" (negative). When the
model's mask already agrees, nothing changes. When it does not, the click sits some depth `d`
inside a wrong region: the pixels within `grow * d` of the click are handed to a random walker
(Grady 2006, scikit-image) on the normalised image, seeded by a disk of radius `d / 2` at the click
with the click's label and by the model's own labels everywhere outside that neighbourhood. The
walker's object probability replaces the model's there, so the correction follows the image's
edges and leaves the rest of the mask exactly as the model drew it. Clicks apply in the order they
were made, each to the mask the earlier ones left (a second click in a false region is measured
against what the first one already removed, not against the model's mask: measured that way, it
could free, and wipe out, most of the object). The result is a function of the box's prediction and
the ordered list of clicks (stateless: undoing a click recomputes it). A model's click refiner
(`click_refine`), when it has one, runs after each step to carry the correction along the mistake.
Without one, the model's uncertainty does that: the pixels where the box's prediction was uncertain
(variance above `DOUBT`) that connect to a click's freed neighbourhood, within `REACH` times its
radius, are freed too, so the walker decides again the whole doubtful band the click landed in.

`grow` = 2 and `beta` = 130 (scikit-image's default) were chosen on training images of the bundled
model (`benchmarks/bench_clicks.py` on subsets of its recipe's training set), never on the
evaluation sets; so were `DOUBT` = 0.1 and `REACH` = 2 (on the training split's held-back patient
and images: walker alone, Dice after 3 clicks +1.8 / +0.6 / +0.2 points on BraTS / Kvasir / scenes;
with the bundled refiner, no change, so the refiner keeps the walker it was trained on).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

GROW = 2.0  # the freed neighbourhood's radius, in units of the click's depth in the wrong region
BETA = 130.0  # the random walker's edge penalty (scikit-image's default)
MIN_RADIUS = 3.0  # pixels: the smallest freed neighbourhood
DOUBT = 0.1  # without a refiner: uncertain pixels (variance above this, of at most 0.25) joined to a click are freed
REACH = 2.0  # ... up to this many times the click's freed radius away
Window = tuple[int, int, int, int]  # (row0, row1, col0, col1), half-open


@dataclass(frozen=True)
class ClickRegion:
    """One click on the pixel grid: where it is, its label, and how far it reaches."""

    row: int
    col: int
    positive: bool
    depth: float  # distance to the nearest pixel already carrying its label: 0 where the mask agrees

    @property
    def freed_radius(self) -> float:
        return max(MIN_RADIUS, GROW * self.depth)


def click_pixel(x: float, y: float, shape: tuple[int, ...]) -> tuple[int, int]:
    """A click at (x, y) -> the (row, col) of the pixel it lands on, clamped to a grid of `shape`."""
    return int(np.clip(round(y), 0, shape[0] - 1)), int(np.clip(round(x), 0, shape[1] - 1))


def click_regions(mask: np.ndarray, points: np.ndarray) -> list[ClickRegion]:
    """Every click (x, y, positive) on `mask`'s grid, with its depth in the region the mask gets wrong.

    The distances are measured in the box around the mask and the clicks, one pixel wider (that ring
    is background), which holds every pixel nearest to a click: exact, and a fraction of a big slice."""
    height, width = mask.shape
    clicks = [(*click_pixel(x, y, mask.shape), bool(label > 0))
              for x, y, label in np.asarray(points, dtype=np.float64).reshape(-1, 3)]
    rows_any, cols_any = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    r0 = max(min([row for row, _, _ in clicks] + rows_any[:1].tolist()) - 1, 0)
    r1 = min(max([row for row, _, _ in clicks] + rows_any[-1:].tolist()) + 2, height)
    c0 = max(min([col for _, col, _ in clicks] + cols_any[:1].tolist()) - 1, 0)
    c1 = min(max([col for _, col, _ in clicks] + cols_any[-1:].tolist()) + 2, width)
    local = mask[r0:r1, c0:c1]
    regions = []
    distance_to = {}
    for row, col, positive in clicks:
        depth = 0.0
        if mask[row, col] != positive:
            if positive not in distance_to:  # distance from every pixel to the nearest pixel labelled `positive`
                target = local if positive else ~local
                distance_to[positive] = (ndimage.distance_transform_edt(~target) if target.any()
                                         else np.full(local.shape, float(max(height, width))))
            depth = float(distance_to[positive][row - r0, col - c0])
        regions.append(ClickRegion(row, col, positive, depth))
    return regions


def owner_of_click(labels: np.ndarray, boxes: dict[int, np.ndarray], x: float, y: float, positive: bool,
                   selected: int) -> int:
    """The object a click on a slice is for: the selected one, unless the click plainly concerns another.

    `labels` is the slice's label image, `boxes` each object's box (x0, y0, x1, y1) on the slice. A
    negative click on another object's mask is for that object (it covers too much there). A click
    outside the selected object's mask and box that lands in exactly one other object's box is for
    that object. Anything else stays with `selected`, as before (a positive click on a neighbour's mask
    asks the selected object to take those pixels)."""
    under = int(labels[click_pixel(x, y, labels.shape)])
    if under == selected:
        return selected
    if under > 0:
        return selected if positive else under

    def inside(box: np.ndarray) -> bool:
        x0, y0, x1, y1 = (float(v) for v in np.asarray(box).reshape(4))
        return x0 <= x <= x1 and y0 <= y <= y1

    if selected in boxes and inside(boxes[selected]):
        return selected
    others = [label for label, box in boxes.items() if label != selected and inside(box)]
    return others[0] if len(others) == 1 else selected


def clicked_patches(clicks_rc: tuple[tuple[int, int], ...], contested: np.ndarray, origin: tuple[int, int]
                    ) -> np.ndarray:
    """The connected parts of `contested` (a mask whose top-left pixel is `origin` on the slice) that hold
    one of the (row, col) positive clicks: those patches go to the clicked object."""
    inside = [(row - origin[0], col - origin[1]) for row, col in clicks_rc]
    inside = [(r, c) for r, c in inside if 0 <= r < contested.shape[0] and 0 <= c < contested.shape[1]]
    if not inside or not contested.any():
        return np.zeros_like(contested)
    parts, _ = ndimage.label(contested)
    return np.isin(parts, [parts[r, c] for r, c in inside if parts[r, c] > 0])


def _window(wrong: list[ClickRegion], shape: tuple[int, int], reach: float = 1.0) -> Window:
    height, width = shape
    return (max(min(math.ceil(r.row - reach * r.freed_radius) for r in wrong) - 2, 0),
            min(max(math.floor(r.row + reach * r.freed_radius) for r in wrong) + 3, height),
            max(min(math.ceil(r.col - reach * r.freed_radius) for r in wrong) - 2, 0),
            min(max(math.floor(r.col + reach * r.freed_radius) for r in wrong) + 3, width))


def _doubtful_band(free: np.ndarray, uncertainty: np.ndarray, wrong: list[ClickRegion], rows, cols) -> np.ndarray:
    """The uncertain pixels (above `DOUBT`) within `REACH` freed radii of a click that connect to `free`."""
    near = np.zeros_like(free)
    for region in wrong:
        near |= (rows - region.row) ** 2 + (cols - region.col) ** 2 <= (REACH * region.freed_radius) ** 2
    doubtful = (uncertainty > DOUBT) & near
    components, _ = ndimage.label(doubtful | free)
    touching = np.unique(components[free])
    return np.isin(components, touching[touching > 0]) & doubtful


def correct_with_clicks(probability: np.ndarray, image01: np.ndarray | Callable[[Window], np.ndarray],
                        points: np.ndarray | None, beta: float = BETA,
                        refine: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
                        uncertainty: np.ndarray | None = None) -> np.ndarray:
    """The object probability after the clicks: `probability` (H, W) where the clicks agree with it
    or are far away, the random walker's object probability around each click it contradicts.
    `image01` is the (H, W) or (H, W, C) image in [0, 1], or a function giving the part of it in a
    (row0, row1, col0, col1) window (only the windows the walker works in are asked for); `points`
    (N, 3) rows of (x, y, positive), in the order they were made. `refine(probability, clicks so far)`,
    when given, runs after each walker step that changed something (the click refiner: it extends the
    click's correction along the mistake it landed in; see `click_refine`). `uncertainty` (H, W), the
    box's prediction's, given when there is no refiner: the doubtful band joined to a click is freed too."""
    probability = np.asarray(probability, dtype=np.float32)
    if points is None or len(points) == 0:
        return probability
    points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    read = image01 if callable(image01) else (lambda w: np.asarray(image01)[w[0]:w[1], w[2]:w[3]])
    corrected = probability
    for count in range(1, len(points) + 1):  # each click corrects the mask the earlier ones left
        stepped = correct_step(corrected, read, points[:count], beta, uncertainty)
        if refine is not None and stepped is not corrected:  # a click the mask agreed with changes nothing
            stepped = refine(stepped, points[:count])
        corrected = stepped
    return corrected


def correct_step(probability: np.ndarray, read: Callable[[Window], np.ndarray], points: np.ndarray,
                  beta: float, uncertainty: np.ndarray | None = None) -> np.ndarray:
    """One step: every click a seed, the ones contradicting `probability`'s mask freed around them (and,
    with `uncertainty`, the doubtful band joined to them)."""
    from skimage.segmentation import random_walker  # scikit-image is heavy: imported on the first click

    mask = probability > 0.5
    regions = click_regions(mask, points)
    wrong = [region for region in regions if region.depth > 0]
    if not wrong:
        return probability
    # all work happens in the box around the freed neighbourhoods (and the band they may reach)
    r0, r1, c0, c1 = _window(wrong, mask.shape, 1.0 if uncertainty is None else REACH)
    rows, cols = np.ogrid[r0:r1, c0:c1]
    free = np.zeros((r1 - r0, c1 - c0), bool)
    for region in wrong:
        free |= (rows - region.row) ** 2 + (cols - region.col) ** 2 <= region.freed_radius ** 2
    if uncertainty is not None:
        free |= _doubtful_band(free, uncertainty[r0:r1, c0:c1], wrong, rows, cols)
    seeds = np.where(mask[r0:r1, c0:c1], 1, 2).astype(np.int32)
    seeds[free] = 0
    for region in regions:  # every click is a seed, agreeing or not
        radius = max(1.0, region.depth / 2)
        seeds[(rows - region.row) ** 2 + (cols - region.col) ** 2 <= radius * radius] = 1 if region.positive else 2
    if not (seeds == 1).any() or not (seeds == 2).any():  # one label only: it fills the region
        walked = (seeds != 2).astype(np.float32)
    else:
        crop = np.asarray(read((r0, r1, c0, c1)), dtype=np.float64)
        if crop.shape[:2] != seeds.shape:
            raise ValueError(f"the image part for window {(r0, r1, c0, c1)} has shape {crop.shape[:2]}, "
                             f"not {seeds.shape}")
        crop = _single_channel_if_grey(crop)
        with warnings.catch_warnings():  # "probability range outside [0, 1]" by solver tolerance: clipped below
            warnings.simplefilter("ignore", UserWarning)
            walked = random_walker(crop, seeds, beta=beta, mode="cg_j", return_full_prob=True,
                                   channel_axis=-1 if crop.ndim == 3 else None)[0]
        walked = np.clip(walked, 0.0, 1.0).astype(np.float32)
    corrected = probability.copy()
    corrected[r0:r1, c0:c1][free] = walked[free]
    return corrected


def _single_channel_if_grey(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) with three equal channels -> (H, W): the walker's edge weights are the same, a third of the work."""
    if image.ndim == 3 and image.shape[-1] > 1 and np.array_equal(image[..., 0], image[..., 1]) \
            and np.array_equal(image[..., 0], image[..., -1]):
        return image[..., 0]
    return image

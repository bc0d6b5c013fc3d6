"""Boxes: the one place (row, col) meets (x, y), and the one way a box grows into a region. numpy only.

Coordinates are in pixel units with pixel centres at integers (napari's data coordinates and SAM's
box convention): a tight box around a mask is (col_min, row_min, col_max, row_max).
"""

from __future__ import annotations

import numpy as np

from ..errors import InputError


def box_from_corners_rc(corners_rc: np.ndarray) -> np.ndarray:
    """Any set of (row, col) corner points (e.g. a napari rectangle) -> box (x0, y0, x1, y1)."""
    corners = np.asarray(corners_rc, dtype=np.float64).reshape(-1, 2)
    rows, cols = corners[:, 0], corners[:, 1]
    return np.array([cols.min(), rows.min(), cols.max(), rows.max()])


def box_to_corners_rc(box_xyxy: np.ndarray) -> np.ndarray:
    """Box (x0, y0, x1, y1) -> the 4 (row, col) corners of a napari rectangle."""
    x0, y0, x1, y1 = np.asarray(box_xyxy, dtype=np.float64)
    return np.array([[y0, x0], [y0, x1], [y1, x1], [y1, x0]])


def box_of_mask(mask: np.ndarray) -> np.ndarray:
    """Tight box (x0, y0, x1, y1) around a mask: (col_min, row_min, col_max, row_max)."""
    rows, cols = np.nonzero(mask)
    if rows.size == 0:
        raise InputError("an empty mask has no box")
    return np.array([cols.min(), rows.min(), cols.max(), rows.max()], dtype=np.float64)


def validate_box(box_xyxy: np.ndarray, shape_hw: tuple[int, int]) -> np.ndarray:
    """Clip a box to the image; reject boxes that miss it or have no area."""
    box = np.asarray(box_xyxy, dtype=np.float64).reshape(-1)
    if box.shape != (4,) or not np.isfinite(box).all():
        raise InputError(f"a box is 4 numbers x0,y0,x1,y1; got {box_xyxy!r}")
    height, width = shape_hw
    x0, y0, x1, y1 = box
    shown = ",".join(f"{v:.0f}" for v in box)  # what went wrong first, the numbers rounded: a toast shows little
    if x1 <= x0 or y1 <= y0:
        raise InputError(f"box has zero or negative size (need x1 > x0 and y1 > y0): {shown}")
    if x1 < 0 or y1 < 0 or x0 > width - 1 or y0 > height - 1:
        raise InputError(f"box lies outside the {width}x{height} (width x height) image: x0,y0,x1,y1 = {shown}")
    clipped = np.array([max(x0, 0.0), max(y0, 0.0), min(x1, width - 1.0), min(y1, height - 1.0)])
    if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
        raise InputError(f"box covers no area inside the image: x0,y0,x1,y1 = {shown}")
    return clipped


def scale_box(box_xyxy: np.ndarray, from_hw: tuple[int, int], to_hw: tuple[int, int]) -> np.ndarray:
    """The same box on a resampled grid (pixel centres map to pixel centres' continuous positions)."""
    sy, sx = to_hw[0] / from_hw[0], to_hw[1] / from_hw[1]
    x0, y0, x1, y1 = np.asarray(box_xyxy, dtype=np.float64)
    return np.array([(x0 + 0.5) * sx - 0.5, (y0 + 0.5) * sy - 0.5, (x1 + 0.5) * sx - 0.5, (y1 + 0.5) * sy - 0.5])


def expand_box(box_xyxy: np.ndarray, shape_hw: tuple[int, int], margin: float, min_pad: float
               ) -> tuple[int, int, int, int]:
    """(row0, row1, col0, col1), end-exclusive: the box grown on each side by `margin` of its size (at
    least `min_pad` pixels), clipped to the image."""
    x0, y0, x1, y1 = np.asarray(box_xyxy, dtype=np.float64)
    pad_x, pad_y = max(min_pad, margin * (x1 - x0)), max(min_pad, margin * (y1 - y0))
    return (max(0, int(np.floor(y0 - pad_y))), min(shape_hw[0], int(np.ceil(y1 + pad_y)) + 1),
            max(0, int(np.floor(x0 - pad_x))), min(shape_hw[1], int(np.ceil(x1 + pad_x)) + 1))


def zoom_region(box_xyxy: np.ndarray, shape_hw: tuple[int, int], margin: float) -> tuple[int, int, int, int]:
    """What zoom mode encodes instead of the whole slice: the box plus `margin` (at least 4 px)."""
    return expand_box(box_xyxy, shape_hw, margin, 4.0)


def region_around_box(box_xyxy: np.ndarray, shape_hw: tuple[int, int], margin: float = 0.1
                      ) -> tuple[int, int, int, int]:
    """The decoder's domain at inference and in training: the box plus `margin` (at least 3 px)."""
    return expand_box(box_xyxy, shape_hw, margin, 3.0)


def validate_clicks(points) -> np.ndarray | None:
    """Clicks as (N, 3) float rows of (x, y, positive), or None for no clicks; one message for
    positions that are not finite numbers (the one check every click path goes through)."""
    if points is None or len(points) == 0:
        return None
    points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    if not np.isfinite(points).all():
        raise InputError("click positions must be finite numbers")
    return points


def box_with_clicks(box_xyxy: np.ndarray, points: np.ndarray | None, shape: tuple[int, int],
                    pad: float = 3.0) -> np.ndarray:
    """Grow a box to take in its positive clicks (x, y, positive rows) plus `pad` pixels: a click
    outside the box says the object goes on there. Negative clicks never change the box."""
    box = np.asarray(box_xyxy, dtype=np.float64).copy()
    points = validate_clicks(points)
    if points is None:
        return box
    positive = points[points[:, 2] > 0, :2]
    if not len(positive):
        return box
    height, width = shape
    box[:2] = np.minimum(box[:2], positive.min(axis=0) - pad)
    box[2:] = np.maximum(box[2:], positive.max(axis=0) + pad)
    return np.clip(box, 0, [width - 1, height - 1, width - 1, height - 1])


def nested_in(inner_xyxy, outer_xyxy, tolerance: float = 1.0) -> bool:
    """Whether a box lies inside a larger one (within `tolerance` pixels): a structure inside another (a
    lesion in its organ). Equal boxes are not nested."""
    inner, outer = np.asarray(inner_xyxy, np.float64), np.asarray(outer_xyxy, np.float64)
    inside = (inner[:2] >= outer[:2] - tolerance).all() and (inner[2:] <= outer[2:] + tolerance).all()
    area = (inner[2] - inner[0]) * (inner[3] - inner[1]), (outer[2] - outer[0]) * (outer[3] - outer[1])
    return bool(inside and area[0] < area[1])

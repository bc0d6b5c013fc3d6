"""Intensity windows, resize-and-pad geometry, and the one place boxes change coordinates."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F


class InputError(ValueError):
    """Input a user can fix (bad box, wrong dimensionality, empty image); the message says how."""


@dataclass(frozen=True)
class IntensityWindow:
    """How raw intensities become [0, 1] before the encoder.

    mode: "auto" (uint8 as is, RGB as is, else percentiles), "window" (CT level/width),
    "percentile" (MR: clip to the low/high percentiles), "minmax", "unit" (already in [0, 1]:
    a crop of a slice normalised as a whole).
    """

    mode: str = "auto"
    level: float = 40.0
    width: float = 400.0
    low_percentile: float = 0.5
    high_percentile: float = 99.5

    def cache_token(self) -> tuple:
        return (self.mode, self.level, self.width, self.low_percentile, self.high_percentile)


CT_PRESETS: dict[str, IntensityWindow] = {
    "soft tissue": IntensityWindow("window", level=40, width=400),
    "lung": IntensityWindow("window", level=-600, width=1500),
    "bone": IntensityWindow("window", level=400, width=1800),
    "brain": IntensityWindow("window", level=40, width=80),
}
MR_PERCENTILES = IntensityWindow("percentile", low_percentile=0.5, high_percentile=99.5)
UNIT = IntensityWindow("unit")


def as_2d_image(image: np.ndarray) -> np.ndarray:
    """Check a slice is (H, W) grey or (H, W, 3|4) colour; returns it (RGBA drops alpha)."""
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] in (3, 4):
        image = image[..., :3]
    elif image.ndim != 2:
        raise InputError(
            f"expected a 2D slice (H, W) or a colour image (H, W, 3); got shape {image.shape}. "
            "Pick one slice of a volume first"
        )
    if image.shape[0] < 2 or image.shape[1] < 2:
        raise InputError(f"image of shape {image.shape} is too small to segment")
    return image


def normalize_intensity(image: np.ndarray, window: IntensityWindow | None = None) -> np.ndarray:
    """(H, W) or (H, W, 3) raw slice -> (H, W, 3) float32 in [0, 1]."""
    image = as_2d_image(image)
    window = window or IntensityWindow()
    data = image.astype(np.float32, copy=False)
    if not np.isfinite(data).all():
        data = np.nan_to_num(data, nan=0.0, posinf=0.0, neginf=0.0)
    mode = window.mode
    if mode == "auto":
        if image.dtype == np.uint8:
            mode = "uint8"
        elif image.ndim == 3:
            mode = "minmax"
        else:
            mode = "percentile"
    if mode == "uint8":
        scaled = data / 255.0
    elif mode == "unit":
        scaled = data
    elif mode == "window":
        if not (np.isfinite(window.level) and np.isfinite(window.width) and window.width > 0):
            raise InputError(f"window width must be positive and the level a number, got level {window.level}, "
                             f"width {window.width}")
        low = window.level - window.width / 2.0
        scaled = (data - low) / window.width
    elif mode in ("percentile", "minmax"):
        if mode == "percentile":
            low, high = np.percentile(data, [window.low_percentile, window.high_percentile])
        else:
            low, high = float(data.min()), float(data.max())
        scaled = (data - low) / (high - low) if high > low else np.zeros_like(data)
    else:
        raise InputError(f"unknown intensity mode {window.mode!r}")
    scaled = np.clip(scaled, 0.0, 1.0)
    if scaled.ndim == 2:
        scaled = np.repeat(scaled[..., None], 3, axis=-1)
    return np.ascontiguousarray(scaled, dtype=np.float32)


@dataclass(frozen=True)
class Geometry:
    """How an (H, W) image sits in the encoder's S x S input: resized by `scale`, padded bottom/right."""

    height: int
    width: int
    input_size: int

    @property
    def scale(self) -> float:
        return self.input_size / max(self.height, self.width)

    @property
    def resized(self) -> tuple[int, int]:
        return (max(1, round(self.height * self.scale)), max(1, round(self.width * self.scale)))

    @property
    def extent(self) -> tuple[float, float]:
        """(x, y) fraction of the padded square that the image covers."""
        h, w = self.resized
        return (w / self.input_size, h / self.input_size)

    def box_to_input(self, box_xyxy: np.ndarray) -> np.ndarray:
        """Box in image pixels (x0, y0, x1, y1) -> encoder-input pixels (what SAM's prompt encoder takes)."""
        h, w = self.resized
        factors = np.array([w / self.width, h / self.height, w / self.width, h / self.height])
        return np.asarray(box_xyxy, dtype=np.float64) * factors


def to_model_input(image01: np.ndarray, geometry: Geometry) -> torch.Tensor:
    """(H, W, 3) in [0, 1] -> (1, 3, S, S) float 0-255, resized (antialiased) and zero-padded."""
    tensor = torch.from_numpy(image01).permute(2, 0, 1).unsqueeze(0) * 255.0
    resized = F.interpolate(tensor, size=geometry.resized, mode="bilinear", align_corners=False,
                            antialias=True)
    pad_h = geometry.input_size - geometry.resized[0]
    pad_w = geometry.input_size - geometry.resized[1]
    return F.pad(resized, (0, pad_w, 0, pad_h))


# ---- boxes: the one place (row, col) meets (x, y) -------------------------------------------------
# Coordinates are in pixel units with pixel centres at integers (napari's data coordinates and
# SAM's box convention): a tight box around a mask is (col_min, row_min, col_max, row_max).
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
    if x1 <= x0 or y1 <= y0:
        raise InputError(f"box {box.tolist()} has zero or negative size (need x1 > x0 and y1 > y0)")
    if x1 < 0 or y1 < 0 or x0 > width - 1 or y0 > height - 1:
        raise InputError(f"box {box.tolist()} lies outside the {width}x{height} (width x height) image")
    clipped = np.array([max(x0, 0.0), max(y0, 0.0), min(x1, width - 1.0), min(y1, height - 1.0)])
    if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
        raise InputError(f"box {box.tolist()} covers no area inside the image")
    return clipped


def box_has_contrast(image: np.ndarray, box_xyxy: np.ndarray, window: IntensityWindow | None = None) -> bool:
    """Whether the pixels in the box differ at all (after a CT window): a constant or all-NaN region
    gives the encoder nothing to see, and whatever mask comes out is meaningless."""
    x0, y0, x1, y1 = box_xyxy
    region = np.asarray(image)[int(np.floor(y0)):int(np.ceil(y1)) + 1, int(np.floor(x0)):int(np.ceil(x1)) + 1]
    values = region[np.isfinite(region)].astype(np.float64) if region.dtype.kind == "f" else region.astype(np.float64)
    if values.size == 0:
        return False
    if window is not None and window.mode == "window" and window.width > 0:
        values = np.clip((values - (window.level - window.width / 2.0)) / window.width, 0.0, 1.0)
    return bool(values.max() > values.min())


def scale_box(box_xyxy: np.ndarray, from_hw: tuple[int, int], to_hw: tuple[int, int]) -> np.ndarray:
    """The same box on a resampled grid (pixel centres map to pixel centres' continuous positions)."""
    sy, sx = to_hw[0] / from_hw[0], to_hw[1] / from_hw[1]
    x0, y0, x1, y1 = np.asarray(box_xyxy, dtype=np.float64)
    return np.array([(x0 + 0.5) * sx - 0.5, (y0 + 0.5) * sy - 0.5, (x1 + 0.5) * sx - 0.5, (y1 + 0.5) * sy - 0.5])


def zoom_region(box_xyxy: np.ndarray, shape_hw: tuple[int, int], margin: float) -> tuple[int, int, int, int]:
    """(row0, row1, col0, col1) end-exclusive: the box grown by `margin` of its size (at least 4 px)
    on each side, clipped; what zoom mode encodes instead of the whole slice."""
    x0, y0, x1, y1 = box_xyxy
    pad_x, pad_y = max(4.0, margin * (x1 - x0)), max(4.0, margin * (y1 - y0))
    return (max(0, int(np.floor(y0 - pad_y))), min(shape_hw[0], int(np.ceil(y1 + pad_y)) + 1),
            max(0, int(np.floor(x0 - pad_x))), min(shape_hw[1], int(np.ceil(x1 + pad_x)) + 1))


def region_around_box(box_xyxy: np.ndarray, shape_hw: tuple[int, int], margin: float = 0.1
                      ) -> tuple[int, int, int, int]:
    """(row0, row1, col0, col1), end-exclusive: the box plus a margin (a fraction of its size, at
    least 3 px), clipped to the image. The decoder's domain at inference and in training."""
    x0, y0, x1, y1 = box_xyxy
    pad_x, pad_y = max(3.0, margin * (x1 - x0)), max(3.0, margin * (y1 - y0))
    return (max(0, int(np.floor(y0 - pad_y))), min(shape_hw[0], int(np.ceil(y1 + pad_y)) + 1),
            max(0, int(np.floor(x0 - pad_x))), min(shape_hw[1], int(np.ceil(x1 + pad_x)) + 1))


def normalized_points(rows: np.ndarray, cols: np.ndarray, out_hw: tuple[int, int]) -> torch.Tensor:
    """Paired (row, col) output-pixel positions (may be fractional) -> (N, 2) query points (x, y) in [-1, 1].

    Pixel i's centre of an n-pixel axis sits at (2 i + 1) / n - 1, so any output size samples the
    same continuous image.
    """
    height, width = out_hw
    x = (2.0 * np.asarray(cols, dtype=np.float64) + 1.0) / width - 1.0
    y = (2.0 * np.asarray(rows, dtype=np.float64) + 1.0) / height - 1.0
    return torch.from_numpy(np.stack([x.ravel(), y.ravel()], axis=-1).astype(np.float32))


def grid_points(rows: np.ndarray, cols: np.ndarray, out_hw: tuple[int, int]) -> torch.Tensor:
    """Query points for the full grid rows x cols (row-major)."""
    rr, cc = np.meshgrid(np.asarray(rows, dtype=np.float64), np.asarray(cols, dtype=np.float64), indexing="ij")
    return normalized_points(rr, cc, out_hw)

"""Resize-and-pad geometry of the encoder input and query points (torch). Windows live in `windows`,
boxes in `boxes`; both are re-exported here for older imports."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

from ..errors import InputError  # noqa: F401 - re-exported
from .boxes import (  # noqa: F401 - re-exported
    box_from_corners_rc,
    box_of_mask,
    box_to_corners_rc,
    expand_box,
    region_around_box,
    scale_box,
    validate_box,
    zoom_region,
)
from .windows import (  # noqa: F401 - re-exported
    CT_PRESETS,
    MR_PERCENTILES,
    UNIT,
    IntensityWindow,
    as_2d_image,
    box_has_contrast,
    normalize_intensity,
    volume_window,
)


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

    def points_to_input(self, xy: np.ndarray) -> np.ndarray:
        """(N, 2) points (x, y) in image pixels -> encoder-input pixels (click prompts)."""
        h, w = self.resized
        return np.asarray(xy, dtype=np.float64).reshape(-1, 2) * np.array([w / self.width, h / self.height])


def to_model_input(image01: np.ndarray, geometry: Geometry) -> torch.Tensor:
    """(H, W, 3) in [0, 1] -> (1, 3, S, S) float 0-255, resized (antialiased) and zero-padded."""
    tensor = torch.from_numpy(image01).permute(2, 0, 1).unsqueeze(0) * 255.0
    resized = F.interpolate(tensor, size=geometry.resized, mode="bilinear", align_corners=False,
                            antialias=True)
    pad_h = geometry.input_size - geometry.resized[0]
    pad_w = geometry.input_size - geometry.resized[1]
    return F.pad(resized, (0, pad_w, 0, pad_h))


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

"""Intensity windows: how raw slice values become [0, 1] before the encoder. numpy only."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InputError


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


def volume_window(volume: np.ndarray, window: IntensityWindow | None, rgb: bool = False) -> IntensityWindow | None:
    """One fixed window for every slice of a volume: percentile and min-max windows are computed over
    the whole volume (a subsample), so a slice without the brightest structure is not stretched
    differently from its neighbours. 2D images, uint8 data and fixed windows pass unchanged."""
    window = window or IntensityWindow()
    data = np.asarray(volume)
    if rgb or data.ndim != 3 or window.mode not in ("auto", "percentile", "minmax") or (
            window.mode == "auto" and data.dtype == np.uint8):
        return None if window == IntensityWindow() else window
    step = max(1, int(np.ceil((data.size / 2_000_000) ** (1 / 3))))
    sample = np.asarray(data[::step, ::step, ::step], dtype=np.float32)
    sample = sample[np.isfinite(sample)]
    if sample.size == 0:
        return window
    if window.mode == "minmax":
        low, high = float(sample.min()), float(sample.max())
    else:
        low, high = (float(v) for v in np.percentile(sample, [window.low_percentile, window.high_percentile]))
    if high <= low:
        return window
    return IntensityWindow("window", level=(low + high) / 2.0, width=high - low)


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


def _finite_float32(image: np.ndarray) -> np.ndarray:
    """The pixels as float32, NaN and +-inf as 0."""
    data = np.asarray(image).astype(np.float32, copy=False)
    return data if np.isfinite(data).all() else np.nan_to_num(data, nan=0.0, posinf=0.0, neginf=0.0)


@dataclass(frozen=True)
class IntensityRange:
    """A window resolved on one image: raw value `offset` maps to 0 and `offset + span` to 1
    (`span` 0: a constant image, all zeros). Applying it is pointwise, so a crop normalised with the
    range of its whole slice equals the same crop of the normalised slice, bit for bit."""

    offset: float
    span: float
    float64: bool = False  # percentile windows compute in float64 (numpy's percentile scalars), as they did

    def apply(self, image: np.ndarray) -> np.ndarray:
        """(H, W) or (H, W, 3) raw pixels -> (H, W, 3) float32 in [0, 1]."""
        data = np.asarray(image)
        data = _finite_float32(data[..., :3] if data.ndim == 3 else data)
        offset, span = (np.float64(self.offset), np.float64(self.span)) if self.float64 else (self.offset, self.span)
        scaled = (data - offset) / span if span > 0 else np.zeros_like(data)
        scaled = np.clip(scaled, 0.0, 1.0)
        if scaled.ndim == 2:
            scaled = np.repeat(scaled[..., None], 3, axis=-1)
        return np.ascontiguousarray(scaled, dtype=np.float32)


def intensity_range(image: np.ndarray, window: IntensityWindow | None = None) -> IntensityRange:
    """The window resolved on a slice: percentiles and min-max read the whole slice."""
    image = as_2d_image(image)
    window = window or IntensityWindow()
    mode = window.mode
    if mode == "auto":
        if image.dtype == np.uint8:
            mode = "uint8"
        elif image.ndim == 3:
            mode = "minmax"
        else:
            mode = "percentile"
    if mode == "uint8":
        return IntensityRange(0.0, 255.0)
    if mode == "unit":
        return IntensityRange(0.0, 1.0)
    if mode == "window":
        if not (np.isfinite(window.level) and np.isfinite(window.width) and window.width > 0):
            raise InputError(f"window width must be positive and the level a number, got level {window.level}, "
                             f"width {window.width}")
        return IntensityRange(window.level - window.width / 2.0, window.width)
    if mode in ("percentile", "minmax"):
        data = _finite_float32(image)
        if mode == "percentile":
            low, high = np.percentile(data, [window.low_percentile, window.high_percentile])
            return IntensityRange(float(low), float(high - low) if high > low else 0.0, float64=True)
        low, high = float(data.min()), float(data.max())
        return IntensityRange(low, high - low if high > low else 0.0)
    raise InputError(f"unknown intensity mode {window.mode!r}")


def normalize_intensity(image: np.ndarray, window: IntensityWindow | None = None) -> np.ndarray:
    """(H, W) or (H, W, 3) raw slice -> (H, W, 3) float32 in [0, 1]."""
    return intensity_range(image, window).apply(as_2d_image(image))


def box_has_contrast(image: np.ndarray, box_xyxy: np.ndarray, window: IntensityWindow | None = None) -> bool:
    """Whether the pixels the decoder sees around the box (the box plus its margin) differ at all (after
    a CT window): a constant or all-NaN region gives the encoder nothing to see, and whatever mask
    comes out is meaningless. (A tight box around a uniform object has contrast: its edge.)"""
    from .boxes import region_around_box

    r0, r1, c0, c1 = region_around_box(np.asarray(box_xyxy, dtype=np.float64), np.shape(image)[:2])
    region = np.asarray(image)[r0:r1, c0:c1]
    values = region[np.isfinite(region)].astype(np.float64) if region.dtype.kind == "f" else region.astype(np.float64)
    if values.size == 0:
        return False
    if window is not None and window.mode == "window" and window.width > 0:
        values = np.clip((values - (window.level - window.width / 2.0)) / window.width, 0.0, 1.0)
    return bool(values.max() > values.min())

"""Synthetic images with exact ground truth: fast, deterministic data for tests and benchmarks."""

from __future__ import annotations

import numpy as np
from skimage.draw import ellipse


def ellipse_phantom(size: int, rng: np.random.Generator, contrast: float = 0.4, noise: float = 0.05
                    ) -> tuple[np.ndarray, np.ndarray]:
    """A noisy grey (size, size) float32 image with one bright rotated ellipse, and its exact mask."""
    image = rng.normal(0.3, noise, (size, size)).astype(np.float32)
    mask = np.zeros((size, size), bool)
    rr, cc = ellipse(
        rng.integers(size // 3, 2 * size // 3), rng.integers(size // 3, 2 * size // 3),
        rng.integers(size // 10, size // 4), rng.integers(size // 10, size // 4),
        shape=mask.shape, rotation=float(rng.uniform(-np.pi / 2, np.pi / 2)),
    )
    mask[rr, cc] = True
    image[mask] += contrast
    return image, mask


def ellipse_phantoms(n: int, size: int = 128, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [ellipse_phantom(size, rng) for _ in range(n)]


def phantom_volume(shape: tuple[int, int, int] = (40, 128, 128), seed: int = 0
                   ) -> tuple[np.ndarray, np.ndarray]:
    """A CT-like (z, y, x) volume in Hounsfield units with exact labels: 1 = organ, 2 = lesion.

    Air (-1000 HU) around a soft-tissue body cylinder (40 HU); an ellipsoidal organ (120 HU) that
    tapers to nothing at both ends; a spherical lesion (200 HU) inside it. Noise sd 15 HU.
    """
    depth, height, width = shape
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.meshgrid(np.arange(depth), np.arange(height), np.arange(width), indexing="ij")
    cy, cx = height / 2, width / 2
    body = ((yy - cy) / (0.45 * height)) ** 2 + ((xx - cx) / (0.47 * width)) ** 2 <= 1
    organ = (((zz - depth / 2) / (0.38 * depth)) ** 2 + ((yy - cy + 0.05 * height) / (0.22 * height)) ** 2
             + ((xx - cx - 0.08 * width) / (0.28 * width)) ** 2) <= 1
    lesion = ((zz - depth / 2) / (0.12 * depth)) ** 2 + ((yy - cy) / (0.06 * height)) ** 2 + (
        (xx - cx - 0.12 * width) / (0.06 * width)) ** 2 <= 1
    volume = np.full(shape, -1000.0, np.float32)
    volume[body] = 40.0
    volume[organ] = 120.0
    volume[lesion & organ] = 200.0
    volume += rng.normal(0.0, 15.0, shape).astype(np.float32)
    labels = np.zeros(shape, np.uint8)
    labels[organ] = 1
    labels[lesion & organ] = 2
    return volume, labels

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

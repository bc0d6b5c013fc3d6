"""CT-like generated scenes with exact labels: many touching structures in a body, so a model must
use the box to decide which one to segment.

One scene is an 8-bit windowed slice (like the bundled CT PNGs) with an integer label map: a body
with a darker fat rim and soft texture; optionally two dark lungs with vessel dots, some split
into lobes by a faint fissure; soft-tissue organs a little brighter or darker than the body,
sometimes separated from their neighbour only by a thin fat plane; a ring (myocardium-like wall
around a bright pool); muscle pairs split by a fat line; bright bones (cortex + marrow, rib-like
arcs). Then blur and noise. Every labelled structure is a candidate target; its mask is exactly
the pixels it keeps after later structures are painted over it.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.draw import polygon


def star_shape(shape_hw: tuple[int, int], center_rc: tuple[float, float], radii_rc: tuple[float, float],
               rng: np.random.Generator, irregularity: float = 0.25, rotation: float | None = None) -> np.ndarray:
    """A filled, smoothly irregular (star-convex) blob: r(t) = 1 + sum_k a_k cos(k t + phi_k), k = 2..5."""
    angles = np.linspace(0.0, 2 * np.pi, 96, endpoint=False)
    radius = np.ones_like(angles)
    for k in range(2, 6):
        radius += rng.uniform(0.0, irregularity / (k - 1)) * np.cos(k * angles + rng.uniform(0, 2 * np.pi))
    radius = np.clip(radius, 0.35, None)
    rotation = rng.uniform(0, np.pi) if rotation is None else rotation
    dy, dx = radii_rc[0] * radius * np.sin(angles), radii_rc[1] * radius * np.cos(angles)
    rows = center_rc[0] + dy * np.cos(rotation) + dx * np.sin(rotation)
    cols = center_rc[1] - dy * np.sin(rotation) + dx * np.cos(rotation)
    mask = np.zeros(shape_hw, bool)
    rr, cc = polygon(rows, cols, shape=shape_hw)
    mask[rr, cc] = True
    return mask


def _split(mask: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cut a mask in two along a gently curved line through its centroid: (side_a, side_b, line)."""
    rows, cols = np.nonzero(mask)
    r_mid, c_mid = rows.mean(), cols.mean()
    angle = rng.uniform(0, np.pi)
    yy, xx = np.mgrid[: mask.shape[0], : mask.shape[1]].astype(np.float32)
    along = (yy - r_mid) * np.cos(angle) - (xx - c_mid) * np.sin(angle)
    across = (yy - r_mid) * np.sin(angle) + (xx - c_mid) * np.cos(angle)
    extent = max(np.ptp(rows), np.ptp(cols), 1)
    signed = across + rng.uniform(-0.6, 0.6) * along**2 / extent + rng.uniform(-0.15, 0.15) * extent
    line = mask & (np.abs(signed) < 0.7)
    return mask & (signed >= 0.7), mask & (signed <= -0.7), line


class _Canvas:
    """Image and label map painted together; a structure's label is its index in `kinds`."""

    def __init__(self, size: int, background: float) -> None:
        self.image = np.full((size, size), background, np.float32)
        self.labels = np.zeros((size, size), np.int32)
        self.kinds: list[str] = ["background"]

    def paint(self, mask: np.ndarray, value: float | np.ndarray, kind: str | None) -> None:
        self.image[mask] = value if np.isscalar(value) else value[mask]
        if kind is not None:
            self.kinds.append(kind)
            self.labels[mask] = len(self.kinds) - 1


def ct_scene(size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """One scene: (size, size) uint8 image, int32 labels (0 = none) and each label's kind."""
    canvas = _Canvas(size, rng.uniform(0.0, 0.08))
    centre = size / 2 + rng.uniform(-0.04, 0.04, 2) * size
    body_radii = (rng.uniform(0.28, 0.44) * size, rng.uniform(0.36, 0.47) * size)
    body = star_shape(canvas.image.shape, tuple(centre), body_radii, rng, irregularity=0.08,
                      rotation=rng.uniform(-0.1, 0.1))
    tissue = rng.uniform(0.35, 0.65)
    fat = tissue - rng.uniform(0.04, 0.15)
    canvas.paint(body, fat, "body")
    inner = ndimage.binary_erosion(body, iterations=int(rng.integers(2, 7)))
    texture = ndimage.gaussian_filter(rng.normal(0, 1, body.shape), rng.uniform(3, 10)).astype(np.float32)
    canvas.paint(inner, tissue + 0.6 * rng.uniform(0.01, 0.04) * texture / (texture.std() + 1e-6), None)
    rows, cols = np.nonzero(inner)

    def place(scale_lo: float, scale_hi: float) -> tuple[tuple[float, float], tuple[float, float]]:
        i = rng.integers(0, len(rows))
        radii = tuple(rng.uniform(scale_lo, scale_hi, 2) * size)
        return (float(rows[i]), float(cols[i])), radii

    if rng.random() < 0.45:  # lungs: dark, vessel dots, lobes split by a faint fissure
        for side in (-1, 1):
            c = (centre[0] + rng.uniform(-0.1, 0.05) * size, centre[1] + side * rng.uniform(0.14, 0.22) * size)
            lung = star_shape(canvas.image.shape, c, (rng.uniform(0.14, 0.26) * size, rng.uniform(0.08, 0.15) * size),
                              rng, 0.25, rotation=rng.uniform(-0.3, 0.3)) & inner
            if lung.sum() < 50:
                continue
            air = rng.uniform(0.0, 0.15)
            if rng.random() < 0.65:
                lobe_a, lobe_b, fissure = _split(lung, rng)
                canvas.paint(lobe_a, air, "lung_lobe")
                canvas.paint(lobe_b, air, "lung_lobe")
                canvas.image[fissure] = air + rng.uniform(0.0, 0.12)
            else:
                canvas.paint(lung, air, "lung")
            lung_rc = np.argwhere(lung)
            for _ in range(int(rng.integers(3, 15))):  # vessels: change the image, not the labels
                vr, vc = lung_rc[rng.integers(0, len(lung_rc))]
                dot = star_shape(canvas.image.shape, (vr, vc), tuple(rng.uniform(0.5, 2.5, 2)), rng, 0.1) & lung
                canvas.image[dot] = tissue + rng.uniform(-0.05, 0.1)
    for _ in range(int(rng.integers(2, 7))):  # organs
        organ = star_shape(canvas.image.shape, *place(0.04, 0.17), rng, rng.uniform(0.05, 0.35)) & inner
        if organ.sum() < 30:
            continue
        contrast = rng.choice([-1, 1]) * rng.uniform(0.02, 0.25)
        if rng.random() < 0.5:  # a fat plane around it
            canvas.image[ndimage.binary_dilation(organ, iterations=int(rng.integers(1, 3))) & inner] = fat
        shade = tissue + contrast + rng.uniform(0.005, 0.03) * rng.normal(0, 1, organ.shape).astype(np.float32)
        canvas.paint(organ, shade, "organ")
    if rng.random() < 0.35:  # ring: myocardium-like wall around a bright pool
        centre_rc, radii = place(0.06, 0.13)
        outer = star_shape(canvas.image.shape, centre_rc, radii, rng, 0.15, rotation=0.0) & inner
        pool = ndimage.binary_erosion(outer, iterations=int(rng.integers(2, max(3, int(min(radii) * 0.5)))))
        if pool.sum() > 20:
            canvas.paint(outer & ~pool, tissue + rng.uniform(-0.05, 0.08), "ring")
            canvas.paint(pool, tissue + rng.uniform(0.1, 0.3), "pool")
    if rng.random() < 0.4:  # muscle pair split by a thin fat line
        muscle = star_shape(canvas.image.shape, *place(0.06, 0.14), rng, 0.2) & inner
        if muscle.sum() > 80:
            half_a, half_b, line = _split(muscle, rng)
            value = tissue + rng.uniform(-0.08, 0.08)
            canvas.paint(half_a, value, "muscle")
            canvas.paint(half_b, value, "muscle")
            canvas.image[line] = fat if rng.random() < 0.7 else value
    for _ in range(int(rng.integers(0, 5))):  # bones: bright cortex, less bright marrow; some rib-like arcs
        centre_rc, radii = place(0.015, 0.07)
        if rng.random() < 0.4:
            radii = (radii[0] * 0.3, radii[1] * 1.5)
        bone = star_shape(canvas.image.shape, centre_rc, radii, rng, 0.2) & body
        if bone.sum() < 12:
            continue
        cortex_value = rng.uniform(0.75, 1.0)
        canvas.paint(bone, cortex_value, "bone")
        marrow = ndimage.binary_erosion(bone, iterations=int(rng.integers(1, 3)))
        canvas.image[marrow] = cortex_value - rng.uniform(0.1, 0.4)
    image = ndimage.gaussian_filter(canvas.image, rng.uniform(0.4, 1.2))
    image = image + rng.normal(0, rng.uniform(0.005, 0.04), image.shape)
    image = np.clip(image, 0, 1) ** rng.uniform(0.8, 1.25)
    return (image * 255).round().astype(np.uint8), canvas.labels, canvas.kinds


def scene_targets(labels: np.ndarray, kinds: list[str], rng: np.random.Generator, n: int, min_area: int = 30
                  ) -> list[tuple[str, np.ndarray]]:
    """Up to `n` distinct structures of a scene as (kind, mask), largest component only (one box, one
    object), the body itself rarely."""
    candidates = []
    for index, kind in enumerate(kinds):
        if index == 0 or (kind == "body" and rng.random() > 0.1):
            continue
        mask = labels == index
        components, count = ndimage.label(mask)
        if count > 1:
            mask = components == 1 + int(np.argmax(np.bincount(components.ravel())[1:]))
        if mask.sum() >= min_area:
            candidates.append((kind, mask))
    order = rng.permutation(len(candidates))[:n]
    return [candidates[i] for i in order]

"""npe2 reader (NIfTI -> image layer: spacing as scale, origin as translate) and writer (labels -> NIfTI
with the source affine)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .io.images import ImageData, read_image, write_array


def get_nifti_reader(path: str | list[str]):
    if isinstance(path, list):
        return None
    if not str(path).lower().endswith((".nii", ".nii.gz")):
        return None
    return read_nifti_layers


def read_nifti_layers(path: str) -> list[tuple]:
    image = read_image(path)
    meta = {"affine": image.affine, "source_path": str(path)}
    kwargs: dict[str, Any] = {"name": Path(path).name.split(".")[0], "metadata": meta}
    if image.spacing:
        kwargs["scale"] = image.spacing
    if image.affine is not None:  # the scanner position of the first voxel, napari axis order (z, y, x)
        kwargs["translate"] = tuple(float(v) for v in np.asarray(image.affine)[:image.data.ndim, 3][::-1])
    return [(image.data, kwargs, "image")]


def write_labels_nifti(path: str, data: Any, meta: dict) -> list[str]:
    """Save a labels layer as NIfTI, restoring the affine of the image it was drawn on."""
    affine = (meta.get("metadata") or {}).get("affine")
    if affine is None and meta.get("scale") is not None:
        scale = list(meta["scale"])[::-1]  # napari (z, y, x) -> NIfTI (x, y, z)
        affine = np.diag([*scale, 1.0])
    source = ImageData(np.asarray(data), affine=None if affine is None else np.asarray(affine))
    write_array(path, np.asarray(data).astype(np.int16 if np.asarray(data).max() < 32768 else np.int32), source)
    return [path]

"""Training samples: one (image slice, binary object mask, box) each, from an export or plain folders."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_imedsam.errors import InputError
from napari_imedsam.inference.windows import IntensityWindow
from napari_imedsam.io.export import read_prompts
from napari_imedsam.io.images import read_image

from .points import box_of_mask

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".nii", ".nii.gz", ".npy", ".bmp")


@dataclass
class Sample:
    """One object to segment: the raw slice, its exact mask, and the box a user drew (or a tight one)."""

    image: np.ndarray
    mask: np.ndarray
    box_xyxy: np.ndarray
    name: str
    window: IntensityWindow | None = None  # how the user saw it (None: automatic)


def _stem(path: Path) -> str:
    name = path.name
    return name[: -len(".nii.gz")] if name.lower().endswith(".nii.gz") else path.stem


def _as_slice(array: np.ndarray) -> np.ndarray:
    """Squeeze a NIfTI 2D slice stored as (1, H, W) to (H, W)."""
    return array[0] if array.ndim == 3 and array.shape[0] == 1 else array


def _window(row: dict, folder: Path) -> IntensityWindow | None:
    """The intensity window a prompt line recorded (None: automatic); a malformed one is named."""
    spec = row.get("window")
    if not isinstance(spec, dict):
        return None
    try:
        return IntensityWindow(**spec)
    except TypeError:
        raise InputError(f"{folder / 'prompts.jsonl'}: case {row['case']} has an unusable window {spec!r}") from None


def load_export(folder: str | os.PathLike) -> list[Sample]:
    """Samples from an `export_slices` dataset: one per box in prompts.jsonl."""
    folder = Path(folder)
    samples = []
    for row in read_prompts(folder):
        case = row["case"]
        label_path = folder / "labelsTr" / f"{case}.nii.gz"
        labels = _as_slice(read_image(label_path).data)
        count = row.get("channels", 1)
        if count not in (1, 3):
            raise InputError(f"{folder / 'prompts.jsonl'}: case {case} declares {count!r} channels (1 or 3 expected)")
        channels = [_as_slice(read_image(folder / "imagesTr" / f"{case}_{c:04d}.nii.gz").data) for c in range(count)]
        if any(c.shape != labels.shape for c in channels):
            raise InputError(f"{label_path}: labels {labels.shape} do not match the image {channels[0].shape}")
        image = channels[0] if len(channels) == 1 else np.stack(channels, axis=-1)
        mask = labels == row["label"]
        window = _window(row, folder)
        if mask.any():
            samples.append(Sample(image, mask, np.asarray(row["box_xyxy"], float), f"{case}:{row['label']}", window))
    return samples


def load_folder(images: str | os.PathLike, masks: str | os.PathLike,
                skipped: list[str] | None = None) -> list[Sample]:
    """Samples from plain folders, each with a tight box. An image pairs with the mask of the same
    name (>0 = object) and with every mask named after it plus `_` and a structure name
    (`IMAGE_liver_000.png`: one object per mask, as in SAM-Med2D's layout and the bundled CT slices).
    `skipped`, when given, receives the names of the images that have no mask, or only empty ones."""
    images, masks = Path(images), Path(masks)
    for folder in (images, masks):
        if not folder.is_dir():
            raise InputError(f"{folder}: " + ("is not a folder" if folder.exists() else "no such folder"))
    if images.resolve() == masks.resolve():  # every image would be its own "mask": a meaningless score
        raise InputError(f"{masks}: the masks folder is the images folder; give the folder of the expert masks")
    image_files = sorted(p for p in images.iterdir() if p.name.lower().endswith(IMAGE_SUFFIXES))
    masks_of = _masks_by_image([_stem(p) for p in image_files],
                               [p for p in masks.iterdir() if p.name.lower().endswith(IMAGE_SUFFIXES)])
    samples = []
    for path in image_files:
        if not masks_of.get(_stem(path)):
            if skipped is not None:
                skipped.append(path.name)
            continue
        count = len(samples)
        image = _as_slice(read_image(path).data)
        for mask_path in masks_of[_stem(path)]:
            mask_data = _as_slice(read_image(mask_path).data)
            first = mask_data[..., 0] if mask_data.ndim == 3 else mask_data
            mask = first > (127 if mask_data.dtype == np.uint8 else 0)
            if mask.shape != image.shape[:2]:
                raise InputError(f"{mask_path}: mask of shape {mask.shape} does not match its image "
                                 f"{path} of shape {image.shape[:2]}")
            if mask.any():
                samples.append(Sample(image, mask, box_of_mask(mask), _stem(mask_path)))
        if skipped is not None and len(samples) == count:
            skipped.append(path.name)
    if not samples:
        raise ValueError(f"no image in {images} has a non-empty mask in {masks} named after it "
                         "(IMAGE.png, or IMAGE_STRUCTURE.png for one object per mask)")
    return samples


def _masks_by_image(image_stems: list[str], mask_paths: list[Path]) -> dict[str, list[Path]]:
    """Each mask to its image: the same name, else the longest image name it starts with plus `_`;
    per image, the same-named mask first, then the structure masks by name."""
    known = set(image_stems)
    by_length = sorted(known, key=len, reverse=True)
    found: dict[str, list[Path]] = {}
    for mask_path in sorted(mask_paths, key=lambda p: (_stem(p) not in known, _stem(p))):
        stem = _stem(mask_path)
        owner = stem if stem in known else next((s for s in by_length if stem.startswith(s + "_")), None)
        if owner is not None:
            found.setdefault(owner, []).append(mask_path)
    return found


def load_dataset(folder: str | os.PathLike) -> list[Sample]:
    """An export (has prompts.jsonl) or a folder with images/ and masks/ subfolders."""
    folder = Path(folder)
    if (folder / "prompts.jsonl").exists():
        samples = load_export(folder)
    elif (folder / "images").is_dir() and (folder / "masks").is_dir():
        samples = load_folder(folder / "images", folder / "masks")
    else:
        raise ValueError(f"{folder}: expected an I-MedSAM export (prompts.jsonl) or images/ and masks/ folders")
    if not samples:
        raise ValueError(f"{folder}: no usable samples")
    return samples


def manifest_sha256(samples: list[Sample]) -> str:
    """Fingerprint of the training data (names, pixels, masks, boxes) for checkpoint headers."""
    digest = hashlib.sha256()
    for sample in samples:
        digest.update(sample.name.encode())
        digest.update(np.ascontiguousarray(sample.image).tobytes())
        digest.update(np.packbits(sample.mask).tobytes())
        digest.update(json.dumps([float(v) for v in sample.box_xyxy]).encode())
    return digest.hexdigest()


def split(samples: list[Sample], val_fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """Deterministic train/validation split (at least one of each when there are two or more)."""
    order = np.random.default_rng(seed).permutation(len(samples))
    n_val = min(len(samples) - 1, max(1, round(val_fraction * len(samples)))) if len(samples) > 1 else 0
    return [samples[i] for i in order[n_val:]], [samples[i] for i in order[:n_val]]

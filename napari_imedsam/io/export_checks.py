"""Checks an export runs on every slice before it writes anything; one clear message per problem."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import InputError

if TYPE_CHECKING:
    from .export import ExportSlice

CORE_FIELDS = ("case", "label", "box_xyxy", "source", "slice_index", "axis", "model", "adapter_version", "time",
               "channels")
MAX_LABEL = 2**31 - 1


@dataclass
class CheckedSlice:
    """A slice that passed every check: its channels, its labels in the dtype they fit, its boxes."""

    slice: ExportSlice
    channels: list[np.ndarray]
    labels: np.ndarray
    boxes: list[tuple[int, list[float]]]

    def prompt_lines(self, case: str, now: str) -> list[dict]:
        item = self.slice
        core = {"case": case, "source": str(item.source), "slice_index": item.slice_index, "axis": item.axis,
                "model": str(item.model), "adapter_version": str(item.adapter_version), "time": now,
                "channels": len(self.channels)}
        return [{**item.extra, **core, "label": label, "box_xyxy": box} for label, box in self.boxes]


def label_dtype(high: int) -> np.dtype:
    """The smallest unsigned/signed integer type nnU-Net reads that holds label values 0..high."""
    if high <= 255:
        return np.dtype(np.uint8)
    return np.dtype(np.uint16 if high <= 65535 else np.int32)


def _channels(where: str, image: np.ndarray) -> list[np.ndarray]:
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.dtype.kind not in "biuf":
        raise InputError(f"{where}: image of type {image.dtype} cannot be exported (numbers expected)")
    if image.ndim == 2:
        return [image]
    if image.ndim == 3 and image.shape[-1] == 3:
        return [image[..., c] for c in range(3)]
    hint = "; drop the alpha channel first" if image.ndim == 3 and image.shape[-1] == 4 else ""
    raise InputError(f"{where}: image of shape {image.shape}: export takes one 2D slice, grey (H, W) or "
                     f"RGB (H, W, 3){hint}")


def _labels(where: str, labels: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    if labels.shape != shape:
        raise InputError(f"{where}: labels {labels.shape} do not match the slice {shape}")
    if labels.dtype.kind not in "biuf":
        raise InputError(f"{where}: labels of type {labels.dtype} cannot be exported (integers expected)")
    if labels.dtype.kind == "f":
        if not np.isfinite(labels).all():
            raise InputError(f"{where}: labels contain NaN or infinite values")
        if not np.array_equal(labels, np.round(labels)):
            raise InputError(f"{where}: labels have fractional values; label values are whole numbers")
    if not labels.any():
        raise InputError(f"{where}: an accepted slice without labels cannot be exported")
    low, high = labels.min(), labels.max()
    if low < 0:
        raise InputError(f"{where}: negative label value {int(low)}; labels are 0 (background) or positive")
    if high > MAX_LABEL:
        raise InputError(f"{where}: label value {int(high)} is above {MAX_LABEL}, the largest nnU-Net can store")
    return labels.astype(label_dtype(int(high)))


def _boxes(where: str, boxes: object) -> list[tuple[int, list[float]]]:
    if not isinstance(boxes, dict):
        raise InputError(f"{where}: boxes must map label values to (x0, y0, x1, y1)")
    checked = []
    for label, box in boxes.items():
        try:
            value, numbers = int(label), [float(v) for v in box]
        except (TypeError, ValueError):
            raise InputError(f"{where}: box {box!r} for label {label!r} is not 4 numbers") from None
        if value != label or value < 1 or value > MAX_LABEL:
            raise InputError(f"{where}: box key {label!r} is not a positive integer label value")
        if len(numbers) != 4 or not all(math.isfinite(v) for v in numbers):
            raise InputError(f"{where}: box {box!r} for label {value} is not 4 finite numbers")
        checked.append((value, numbers))
    return sorted(checked)


def _extra(where: str, extra: object) -> None:
    if not isinstance(extra, dict) or not all(isinstance(k, str) for k in extra):
        raise InputError(f"{where}: extra must be a dict with string keys")
    clash = sorted(set(extra) & set(CORE_FIELDS))
    if clash:
        raise InputError(f"{where}: extra fields {clash} would override the export's own fields")
    try:
        json.dumps(extra, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{where}: extra fields cannot be stored as JSON ({exc})") from None


def check_slice(index: int, item: ExportSlice) -> CheckedSlice:
    """Every check on one slice; raises `InputError` naming the slice and the problem."""
    where = (f"slice {item.slice_index}" if isinstance(item.slice_index, (int, np.integer)) else f"item {index}") \
        + (f" of {item.source}" if item.source else "")
    image = np.asarray(item.image)
    channels = _channels(where, image)
    labels = _labels(where, np.asarray(item.labels), channels[0].shape)
    boxes = _boxes(where, item.boxes)
    _extra(where, item.extra)
    if item.spacing is not None:
        try:
            spacing = [float(v) for v in item.spacing]
        except (TypeError, ValueError):
            spacing = []
        if len(spacing) != 2 or not all(math.isfinite(v) and v > 0 for v in spacing):
            raise InputError(f"{where}: spacing must be two positive numbers (row, col) in mm, got {item.spacing!r}")
    for name in ("slice_index", "axis"):
        value = getattr(item, name)
        if value is not None and not isinstance(value, (int, np.integer)):
            raise InputError(f"{where}: {name} must be an integer or None, got {value!r}")
    return CheckedSlice(item, channels, labels, boxes)


def check_channels(folder: Path, checked: list[CheckedSlice], channel_names: object) -> None:
    """All slices of one dataset have the channel count its `dataset.json` declares."""
    counts = {len(item.channels) for item in checked}
    if len(counts) > 1:
        raise InputError(f"{folder}: one export mixes grey and RGB slices; export them to separate datasets")
    count = counts.pop()
    if isinstance(channel_names, dict) and channel_names and len(channel_names) != count:
        raise InputError(f"{folder}: dataset.json declares {len(channel_names)} channel(s) "
                         f"({', '.join(map(str, channel_names.values()))}); these slices have {count}. "
                         "Export them to another dataset")

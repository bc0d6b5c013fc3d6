"""Export accepted slices as an nnU-Net v2 raw dataset plus `prompts.jsonl`, append-only and atomic.

Layout (nnU-Net v2 "raw"): `imagesTr/CASE_0000.nii.gz` (one file per channel), `labelsTr/CASE.nii.gz`,
`dataset.json`; and `prompts.jsonl`, one JSON line per box (case, label value, box, source file,
slice index, axis, model and adapter version, time). Every file is written atomically; case ids
only grow, so an export never overwrites an earlier one; `dataset.json` is rewritten last, so an
export interrupted half-way leaves a dataset whose listed cases are all complete.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .._atomic import atomic_write
from .images import ImageData, write_array

CASE_PATTERN = re.compile(r"^imedsam_(\d{5})\.nii\.gz$")
IMAGE_PATTERN = re.compile(r"^imedsam_(\d{5})_\d{4}\.nii\.gz$")


@dataclass
class ExportSlice:
    """One accepted 2D slice: raw pixels, its labels, and the boxes that produced them."""

    image: np.ndarray  # (H, W) or (H, W, 3)
    labels: np.ndarray  # (H, W) integer label values
    boxes: dict[int, Sequence[float]]  # label value -> box (x0, y0, x1, y1)
    source: str = ""
    slice_index: int | None = None
    axis: int | None = None
    model: str = ""
    adapter_version: str = "base"
    spacing: tuple[float, float] | None = None  # (row, col) pixel size in mm
    extra: dict = field(default_factory=dict)


def _existing_cases(folder: Path) -> list[int]:
    """Complete cases: those with a label file (written last)."""
    labels = folder / "labelsTr"
    if not labels.is_dir():
        return []
    return sorted(int(m.group(1)) for p in labels.iterdir() if (m := CASE_PATTERN.match(p.name)))


def _set_aside_incomplete(folder: Path) -> int:
    """Move image files of cases without a label (an interrupted export) to `incomplete/`, where
    nnU-Net will not trip over them; nothing is deleted. Returns the highest case id ever used."""
    complete = set(_existing_cases(folder))
    aside = folder / "incomplete"
    highest = max(complete, default=0)
    for sub in (folder / "imagesTr", aside):
        for path in sub.iterdir() if sub.is_dir() else ():
            match = IMAGE_PATTERN.match(path.name)
            if not match:
                continue
            case = int(match.group(1))
            highest = max(highest, case)
            if sub.name == "imagesTr" and case not in complete:
                aside.mkdir(exist_ok=True)
                os.replace(path, aside / path.name)
    return highest


def _affine(spacing: tuple[float, float] | None) -> np.ndarray:
    row, col = spacing or (1.0, 1.0)
    return np.diag([col, row, 1.0, 1.0])  # NIfTI (x, y, z) = (col, row, slice)


def export_slices(folder: str | os.PathLike, slices: Sequence[ExportSlice]) -> list[str]:
    """Append `slices` to the dataset in `folder` (created if needed); returns the new case ids."""
    folder = Path(folder)
    for sub in ("imagesTr", "labelsTr"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    next_id = _set_aside_incomplete(folder) + 1
    cases, lines = [], []
    for offset, item in enumerate(slices):
        labels = np.asarray(item.labels)
        image = np.asarray(item.image)
        if labels.shape != image.shape[:2]:
            raise ValueError(f"labels {labels.shape} do not match the slice {image.shape[:2]}")
        if not labels.any():
            raise ValueError("an accepted slice without labels cannot be exported")
        case = f"imedsam_{next_id + offset:05d}"
        source = ImageData(labels, affine=_affine(item.spacing))
        channels = [image] if image.ndim == 2 else [image[..., c] for c in range(image.shape[-1])]
        for c, channel in enumerate(channels):  # images first, the label file last: it marks the case complete
            target = folder / "imagesTr" / f"{case}_{c:04d}.nii.gz"
            if target.exists():
                raise FileExistsError(f"{target} exists: refusing to overwrite an earlier export")
            write_array(target, np.asarray(channel), source)
        write_array(folder / "labelsTr" / f"{case}.nii.gz", labels.astype(np.int16), source)
        cases.append(case)
        now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        for label, box in sorted(item.boxes.items()):
            lines.append({"case": case, "label": int(label), "box_xyxy": [float(v) for v in box],
                          "source": item.source, "slice_index": item.slice_index, "axis": item.axis,
                          "model": item.model, "adapter_version": item.adapter_version, "time": now,
                          "channels": len(channels), **item.extra})
    _append_prompts(folder / "prompts.jsonl", lines)
    _write_dataset_json(folder, slices)
    return cases


def _append_prompts(path: Path, lines: list[dict]) -> None:
    """Append whole lines with one write + fsync; a reader skips any torn last line."""
    payload = "".join(json.dumps(line, sort_keys=True) + "\n" for line in lines)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(payload)
        handle.flush()
        os.fsync(handle.fileno())


def _write_dataset_json(folder: Path, slices: Sequence[ExportSlice]) -> None:
    path = folder / "dataset.json"
    previous = json.loads(path.read_text()) if path.exists() else {}
    labels = dict(previous.get("labels", {"background": 0}))
    for item in slices:
        for value in np.unique(np.asarray(item.labels)):
            if value:
                labels.setdefault(f"object_{int(value)}", int(value))
    channels = 3 if any(np.asarray(s.image).ndim == 3 for s in slices) else 1
    names = previous.get("channel_names") or ({"0": "R", "1": "G", "2": "B"} if channels == 3 else {"0": "image"})
    dataset = {
        "name": previous.get("name", folder.name),
        "description": "Slices corrected and accepted in napari-imedsam; boxes in prompts.jsonl",
        "channel_names": names,
        "labels": labels,
        "numTraining": len(_existing_cases(folder)),
        "file_ending": ".nii.gz",
    }
    text = json.dumps(dataset, indent=2, sort_keys=True)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def read_prompts(folder: str | os.PathLike) -> list[dict]:
    """Prompt lines of complete cases (label file present); torn or foreign lines are skipped."""
    folder = Path(folder)
    path = folder / "prompts.jsonl"
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and (folder / "labelsTr" / f"{row.get('case')}.nii.gz").exists():
            rows.append(row)
    return rows

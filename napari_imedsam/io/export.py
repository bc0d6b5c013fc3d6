"""Export accepted slices as an nnU-Net v2 raw dataset plus `prompts.jsonl`, append-only and atomic.

Layout (nnU-Net v2 "raw"): `imagesTr/CASE_0000.nii.gz` (one file per channel), `labelsTr/CASE.nii.gz`,
`dataset.json`; and `prompts.jsonl`, one JSON line per box (case, label value, box, source file,
slice index, axis, model and adapter version, time).

Safety rules: every slice is checked before anything is written; an export holds an inter-process
lock on the folder (`.imedsam.lock`), so two napari windows or a script exporting into one folder
take turns; each case id is reserved with an O_EXCL marker in `.cases/` and never issued twice;
files are written atomically and never replace an existing file. Per export: images, then the
prompt lines, then the label files (a label file marks its case complete), then `dataset.json`.
A failing export (disk full, ...) removes what it wrote and leaves the dataset as it was; one
killed half-way leaves complete cases only (the next export sets unlabelled images aside in
`incomplete/` and removes the dead writer's temporaries).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
import unicodedata
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .._atomic import atomic_write, clean_stale_temporaries, naming
from ..errors import InputError
from .export_checks import CheckedSlice, check_channels, check_slice
from .images import ImageData, write_array

CASE_PATTERN = re.compile(r"^imedsam_(\d{5,})\.nii\.gz$")
IMAGE_PATTERN = re.compile(r"^imedsam_(\d{5,})_\d{4}\.nii\.gz$")
MARKER_PATTERN = re.compile(r"^imedsam_(\d{5,})$")
LOCK_NAME = ".imedsam.lock"
LOCK_TIMEOUT_S = 300.0
SAFE_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,47}$")
HASHED_NAME = re.compile(r"-[0-9a-f]{8}$")
RESERVED_NAMES = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(10)), *(f"lpt{i}" for i in range(10))}


@dataclass
class ExportSlice:
    """One accepted 2D slice: raw pixels, its labels, and the boxes that produced them."""

    image: np.ndarray  # (H, W) or (H, W, 3)
    labels: np.ndarray  # (H, W) non-negative integer label values
    boxes: dict[int, Sequence[float]]  # label value -> box (x0, y0, x1, y1)
    source: str = ""
    slice_index: int | None = None
    axis: int | None = None
    model: str = ""
    adapter_version: str = "base"
    spacing: tuple[float, float] | None = None  # (row, col) pixel size in mm
    affine: np.ndarray | None = None  # the slice's NIfTI affine (`slice_affine`); None: from `spacing`
    extra: dict = field(default_factory=dict)  # more fields for the prompt lines (never the core ones)


def dataset_folder_name(layer_name: str) -> str:
    """A folder name for a layer's export and adapters: a lower-case ASCII slug of the name, plus a
    short hash of the original when the slug differs from it (`"Leber (T1)"` -> `"leber_t1-3f0c..."`),
    so different names never share a folder, even on case-insensitive file systems. Never empty,
    `.`, `..`, hidden or a reserved Windows name."""
    name = str(layer_name)
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9_.-]+", "_", ascii_name.lower()).strip("._-")[:40].strip("._-") or "image"
    if name == slug and SAFE_NAME.match(slug) and not HASHED_NAME.search(slug) and slug not in RESERVED_NAMES:
        return slug
    return f"{slug}-{hashlib.sha256(name.encode('utf-8', 'surrogatepass')).hexdigest()[:8]}"


def _existing_cases(folder: Path) -> list[int]:
    """Complete cases: those with a label file (written last)."""
    labels = folder / "labelsTr"
    if not labels.is_dir():
        return []
    return sorted(int(m.group(1)) for p in labels.iterdir() if (m := CASE_PATTERN.match(p.name)))


def _set_aside_incomplete(folder: Path) -> int:
    """Move image files of cases without a label (an interrupted export) to `incomplete/`, where
    nnU-Net will not trip over them; nothing is deleted. Returns the highest case id ever issued."""
    complete = set(_existing_cases(folder))
    aside = folder / "incomplete"
    highest = max(complete, default=0)
    sources = ((folder / "imagesTr", IMAGE_PATTERN), (aside, IMAGE_PATTERN), (folder / ".cases", MARKER_PATTERN))
    for sub, pattern in sources:
        for path in sub.iterdir() if sub.is_dir() else ():
            match = pattern.match(path.name)
            if not match:
                continue
            case = int(match.group(1))
            highest = max(highest, case)
            if sub.name == "imagesTr" and case not in complete:
                aside.mkdir(exist_ok=True)
                os.replace(path, aside / path.name)
    return highest


def _reserve_case(folder: Path, after: int) -> tuple[str, Path]:
    """The next unused case id above `after`, claimed by creating its marker with O_EXCL."""
    markers = folder / ".cases"
    markers.mkdir(exist_ok=True)
    number = after + 1
    while True:
        case = f"imedsam_{number:05d}"
        try:
            os.close(os.open(markers / case, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
            return case, markers / case
        except FileExistsError:
            number += 1


def _affine(spacing: tuple[float, float] | None) -> np.ndarray:
    row, col = spacing or (1.0, 1.0)
    return np.diag([col, row, 1.0, 1.0])  # NIfTI (x, y, z) = (col, row, slice)


def slice_affine(source_affine, ndim: int, axis: int | None, slice_index: int | None) -> np.ndarray:
    """The NIfTI affine of one exported slice (x = its columns, y = its rows, z = the slice) of an image
    read from NIfTI with `source_affine` (napari's `ndim` axes are the NIfTI axes reversed; `axis` is
    the napari axis slices are taken along, None for a 2D image): the slice keeps the source's
    directions, spacings (the slice thickness too) and position in the scanner."""
    in_plane = [a for a in range(ndim) if a != axis]
    row_axis, col_axis = in_plane[-2:]
    voxel = np.zeros((4, 4))  # slice voxel (col, row, 0, 1) -> source voxel (i, j, k, 1)
    voxel[ndim - 1 - col_axis, 0] = voxel[ndim - 1 - row_axis, 1] = voxel[3, 3] = 1.0
    through = 2 if axis is None else ndim - 1 - axis
    voxel[through, 2] = 1.0
    voxel[through, 3] = 0.0 if axis is None else float(slice_index or 0)
    return np.asarray(source_affine, np.float64) @ voxel


def _refuse_symlinks(folder: Path) -> None:
    for name in (LOCK_NAME, "prompts.jsonl", "dataset.json", "imagesTr", "labelsTr", "incomplete", ".cases"):
        if (folder / name).is_symlink():
            raise InputError(f"{folder / name} is a symbolic link; refusing to write through it "
                             "(replace it with a regular file or folder)")


def dataset_lock(folder: Path):
    """The inter-process lock every export of `folder` holds while it writes."""
    from filelock import FileLock

    return FileLock(str(folder / LOCK_NAME), timeout=LOCK_TIMEOUT_S)


def export_slices(folder: str | os.PathLike, slices: Sequence[ExportSlice]) -> list[str]:
    """Append `slices` to the dataset in `folder` (created if needed); returns the new case ids.
    Raises `InputError` (a ValueError) for slices that cannot be exported, before writing anything."""
    from filelock import Timeout

    folder = Path(folder)
    checked = [check_slice(index, item) for index, item in enumerate(slices)]
    if not checked:
        return []
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{folder}: exists and is not a folder")
    _refuse_symlinks(folder)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        with dataset_lock(folder):
            _refuse_symlinks(folder)
            return _export_locked(folder, checked)
    except Timeout:
        raise InputError(f"{folder}: another export has held the folder for {LOCK_TIMEOUT_S:.0f} s; "
                         "try again when it has finished") from None


def _export_locked(folder: Path, checked: list[CheckedSlice]) -> list[str]:
    names = _read_dataset_json(folder).get("channel_names")
    check_channels(folder, checked, names)
    for sub in (folder, folder / "imagesTr", folder / "labelsTr"):
        sub.mkdir(exist_ok=True)
        clean_stale_temporaries(sub)
    highest = _set_aside_incomplete(folder)
    prompts = folder / "prompts.jsonl"
    size_before = prompts.stat().st_size if prompts.exists() else None
    written: list[Path] = []
    cases, lines, labels = [], [], []
    try:
        now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        for item in checked:  # images first: without a label file they are not a case yet
            case, marker = _reserve_case(folder, highest)
            written.append(marker)
            highest = int(case.split("_")[1])
            affine = item.slice.affine
            source = ImageData(item.labels, affine=_affine(item.slice.spacing) if affine is None else
                               np.asarray(affine, np.float64))
            for c, channel in enumerate(item.channels):
                written.append(write_array(folder / "imagesTr" / f"{case}_{c:04d}.nii.gz", channel, source,
                                           overwrite=False))
            cases.append(case)
            labels.append((folder / "labelsTr" / f"{case}.nii.gz", item.labels, source))
            lines += item.prompt_lines(case, now)
        _append_prompts(prompts, lines)
        for path, label_array, source in labels:  # a label file marks its case complete
            written.append(write_array(path, label_array, source, overwrite=False))
        _write_dataset_json(folder, checked)
    except BaseException:
        for path in reversed(written):
            path.unlink(missing_ok=True)
        if size_before is None:
            prompts.unlink(missing_ok=True)
        elif prompts.exists() and not prompts.is_symlink():
            os.truncate(prompts, size_before)
        raise
    return cases


def _append_prompts(path: Path, lines: list[dict]) -> None:
    """Append whole lines with one write + fsync, starting on a new line: a line torn by a crash
    stays a line of its own (the reader skips and reports it) instead of swallowing the next one."""
    payload = "".join(json.dumps(line, sort_keys=True, allow_nan=False) + "\n" for line in lines).encode()
    flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
    try:
        with os.fdopen(os.open(path, flags, 0o644), "a+b") as handle:
            size = handle.seek(0, os.SEEK_END)
            if size:
                handle.seek(size - 1)
                if handle.read(1) != b"\n":
                    payload = b"\n" + payload
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as exc:
        if exc.filename is None and exc.errno is not None:  # a full disk mid-write: name the file
            raise naming(path, exc) from exc
        raise


def _read_dataset_json(folder: Path) -> dict:
    path = folder / "dataset.json"
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: not valid JSON ({exc}); repair or remove it before exporting") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data


def _write_dataset_json(folder: Path, checked: list[CheckedSlice]) -> None:
    previous = _read_dataset_json(folder)
    labels = dict(previous.get("labels", {"background": 0}))
    for item in checked:
        for value in np.unique(item.labels):
            if value:
                labels.setdefault(f"object_{int(value)}", int(value))
    channels = len(checked[0].channels)
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
    atomic_write(folder / "dataset.json", lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def read_prompts(folder: str | os.PathLike) -> list[dict]:
    """Prompt lines of complete cases (label file present). Lines that are not a valid prompt (one torn
    by a crash, or edited by hand) are skipped and reported in one warning naming their numbers."""
    folder = Path(folder)
    path = folder / "prompts.jsonl"
    if not path.exists():
        return []
    rows, broken, orphans = [], [], []
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        if not _valid_prompt(row):
            broken.append(number)
            continue
        if (folder / "labelsTr" / f"{row['case']}.nii.gz").exists():
            rows.append(row)
        else:
            orphans.append(row["case"])
    if orphans:  # an export killed between its prompt lines and its label file: the case went to incomplete/
        cases = sorted(set(orphans))
        shown = ", ".join(cases[:5]) + (", ..." if len(cases) > 5 else "")
        warnings.warn(f"{path}: skipped {len(orphans)} prompt line(s) of {len(cases)} case(s) with no label file "
                      f"({shown}): an export was interrupted; their images are in {folder / 'incomplete'}",
                      stacklevel=2)
    if broken:
        shown = ", ".join(map(str, broken[:10])) + (", ..." if len(broken) > 10 else "")
        warnings.warn(f"{path}: skipped {len(broken)} broken line(s) (line {shown}): not a complete prompt, "
                      "e.g. a write interrupted by a crash", stacklevel=2)
    return rows


def _valid_prompt(row: object) -> bool:
    if not isinstance(row, dict) or not isinstance(row.get("case"), str) or not MARKER_PATTERN.match(row["case"]):
        return False
    box = row.get("box_xyxy")
    return (isinstance(row.get("label"), int) and row["label"] > 0 and isinstance(box, list) and len(box) == 4
            and all(isinstance(v, (int, float)) and np.isfinite(v) for v in box))

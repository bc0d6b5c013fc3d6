"""Fault injection, part 3: hostile input to the export (labels, channels, names, symlinks, extra
fields). Bad slices are refused before anything is written; what is accepted round-trips exactly."""

from __future__ import annotations

import re
import warnings

import nibabel as nib
import numpy as np
import pytest

from napari_imedsam.io import export
from napari_imedsam.io.export import ExportSlice, export_slices, read_prompts

from .fault_fixtures import square_slice
from .faults import DataLost, Silent, expect_refused


def _with(labels=None, image=None, **fields) -> ExportSlice:
    item = square_slice(**fields)
    if labels is not None:
        item.labels = labels
    if image is not None:
        item.image = image
    return item


def _nan_labels() -> np.ndarray:
    labels = square_slice().labels.astype(np.float32)
    labels[0, 0] = np.nan
    return labels


BAD_SLICES = {  # name: (slice factory, words the message must contain)
    "NaN labels": (lambda: _with(labels=_nan_labels()), ["NaN"]),
    "negative labels": (lambda: _with(labels=square_slice().labels * -3), ["negative"]),
    "4-channel image": (lambda: _with(image=np.zeros((24, 24, 4), np.float32)), ["(24, 24, 4)"]),
    "4D image": (lambda: _with(image=np.zeros((2, 24, 24, 3), np.float32)), ["(2, 24, 24, 3)"]),
    # named by the volume's slice, not by its place in the batch (was "slice 0 (...)" for slice 33)
    "empty labels": (lambda: _with(labels=np.zeros((24, 24), np.int32), slice_index=33),
                     ["slice 33 of fault.nii.gz", "without labels"]),
}


@pytest.mark.parametrize("case", list(BAD_SLICES))
def test_bad_slices_are_refused_before_anything_is_written(small_export, case):
    make, mentions = BAD_SLICES[case]
    expect_refused(lambda: export_slices(small_export, [square_slice(4.0), make()]), small_export, mentions)


def test_rgb_slices_into_a_grey_dataset_are_refused(small_export):
    rgb = np.repeat(square_slice().image[..., None], 3, axis=-1)
    expect_refused(lambda: export_slices(small_export, [_with(image=rgb)]), small_export, ["dataset.json"])


@pytest.mark.parametrize("value", [40000, 70000])
def test_large_label_values_round_trip_exactly(tmp_path, value):
    [case] = export_slices(tmp_path, [square_slice(label=value)])
    stored = np.asarray(nib.load(tmp_path / "labelsTr" / f"{case}.nii.gz").dataobj)
    if set(np.unique(stored)) != {0, value}:
        raise DataLost(f"label {value} was stored as {sorted(set(np.unique(stored)) - {0})}")
    assert read_prompts(tmp_path)[0]["label"] == value


def _folder_name(layer_name: str) -> str:
    """The export folder name for a layer (before the fix the widget inlined this rule)."""
    name_of = getattr(export, "dataset_folder_name", None)
    return name_of(layer_name) if name_of else re.sub(r"[^A-Za-z0-9_.-]+", "_", layer_name)


@pytest.mark.parametrize("names", [("..",), (".",), ("",), ("肝臓", "脾臓"), ("Liver", "liver"), ("a b", "a_b")])
def test_layer_names_never_share_or_leave_the_export_folder(tmp_path, names):
    exports = tmp_path / "work" / "exports"
    folders = [(exports / _folder_name(name)).resolve() for name in names]
    for name, folder in zip(names, folders):
        if folder.parent != exports.resolve() or folder.name.startswith("."):
            raise DataLost(f"layer {name!r} exports to {folder}, not a folder of its own in {exports}")
    if len({str(f).lower() for f in folders}) != len(folders):  # case-insensitive file systems too
        raise DataLost(f"layers {names} share the export folder {folders[0].name}")


def test_a_symlinked_prompts_file_is_not_written_through(tmp_path, small_export):
    target = tmp_path / "elsewhere.jsonl"
    target.write_text("precious\n")
    (small_export / "prompts.jsonl").unlink()
    (small_export / "prompts.jsonl").symlink_to(target)
    error = None
    try:
        export_slices(small_export, [square_slice(3.0)])
    except (ValueError, OSError) as exc:
        error = exc
    if target.read_text() != "precious\n":
        raise DataLost("the export appended to the symlink's target outside the dataset")
    if error is None:
        raise Silent("a symlinked prompts.jsonl was accepted")
    assert "symbolic link" in str(error)


def test_extra_fields_cannot_override_the_prompt_core_fields(small_export):
    item = square_slice(8.0, extra={"case": "imedsam_00001", "label": 9, "note": "ok"})
    try:
        [case] = export_slices(small_export, [item])
    except ValueError as exc:
        assert "case" in str(exc)
        return
    row = [r for r in read_prompts(small_export) if r.get("note") == "ok"]
    if not row or row[0]["case"] != case or row[0]["label"] != 1:
        raise DataLost(f"extra fields rewrote the prompt of {case}: {row}")


def _load_with_warnings(folder) -> tuple[list, list[str]]:
    """The training data of an export, and the warnings loading it gave."""
    from src_train.data import load_dataset

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        samples = load_dataset(folder)
    return samples, [str(w.message) for w in caught]


def test_training_data_skips_and_reports_lines_that_are_not_prompts(small_export):
    with open(small_export / "prompts.jsonl", "a") as handle:
        handle.write('{"case": "imedsam_00001"}\n[1, 2]\n')
    samples, said = _load_with_warnings(small_export)
    assert len(samples) == 3
    if not any("2 broken line(s)" in message for message in said):
        raise Silent("lines without a case, label and box were dropped without a word")


def test_prompt_lines_of_a_case_without_labels_are_skipped_with_a_word(small_export):
    """A writer killed after its prompt lines but before its label file: the case is set aside; the
    training data names the orphan lines instead of dropping them silently."""
    (small_export / "labelsTr" / "imedsam_00002.nii.gz").unlink()
    samples, said = _load_with_warnings(small_export)
    assert len(samples) == 2
    if not any("1 prompt line(s) of 1 case(s) with no label file (imedsam_00002)" in message for message in said):
        raise Silent("prompt lines of a case without labels were dropped without a word")

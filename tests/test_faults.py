"""Fault injection, part 1: racing writers, processes killed mid-write, disks that fill up.

Each case raises a `tests.faults.Harm` when it goes wrong (data lost, traceback, ...), so a run
prints how many cases end which way. See also test_faults_input.py and test_faults_models.py.
"""

from __future__ import annotations

import errno
import io
import os
import re
import tempfile
import time
import warnings

import nibabel as nib
import numpy as np
import pytest

from napari_imedsam.io.export import export_slices, read_prompts
from src_train.data import load_dataset

from .fault_fixtures import square_slice
from .faults import DataLost, Silent, check_one_error, expect_error, expect_refused, python, run_cli

DATA_FILE = re.compile(r"^imedsam_\d{5}(_\d{4})?\.nii\.gz$")
RACE_EXPORT = """
import sys, time
from pathlib import Path
import nibabel, numpy as np  # imported before the start: both writers start at full speed
from napari_imedsam.io.export import ExportSlice, export_slices
folder, writer, go, count = Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4])
go.with_name(f"ready{writer}").touch()
while not go.exists():
    time.sleep(0.002)
for index in range(count):
    labels = np.zeros((24, 24), np.uint8)
    labels[4:16, 5:17] = 1
    pixels = np.full((24, 24), 100 * writer + index, np.float32)
    export_slices(folder, [ExportSlice(pixels, labels, {1: [5, 4, 16, 15]}, extra={"writer": writer, "index": index})])
"""
RACE_SAVE = """
import sys, time, warnings
from pathlib import Path
import torch
warnings.simplefilter("ignore")
from napari_imedsam.model.registry import load_model
from napari_imedsam.model.weights import save_adapters
from src_train.trainer import next_version_path
folder, writer, go, count = Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4])
network = load_model("tiny").network
lora = next(p for _, p in network.parameter_groups()["lora"])
go.with_name(f"ready{writer}").touch()
while not go.exists():
    time.sleep(0.002)
for index in range(count):
    with torch.no_grad():
        lora.fill_(100 * writer + index)
    header = {"base_model": "tiny", "base_sha256": "race", "writer": writer, "index": index}
    save_adapters(network, next_version_path(folder), header)
"""
SLOW_EXPORT = """
import gzip, sys, time
import numpy as np
real = gzip.GzipFile.write
def slow(self, data):  # a slow disk: the parent kills this process in the middle of the image file
    time.sleep(2.0)
    return real(self, data)
gzip.GzipFile.write = slow
from napari_imedsam.io.export import ExportSlice, export_slices
labels = np.zeros((64, 64), np.uint8)
labels[10:30, 10:30] = 1
pixels = np.random.default_rng(0).normal(size=(64, 64)).astype(np.float32)
export_slices(sys.argv[1], [ExportSlice(pixels, labels, {1: [10, 10, 29, 29]})])
"""
KILLED_SAVE = """
import os, signal, sys, warnings
from pathlib import Path
warnings.simplefilter("ignore")
from napari_imedsam.model.registry import load_model
from napari_imedsam.model.weights import save_adapters
from src_train.trainer import next_version_path
network = load_model("tiny").network
def die(*args, **kwargs):  # killed after the temporary is complete, before it gets its name
    os.kill(os.getpid(), signal.SIGKILL)
os.replace = os.link = os.rename = die
save_adapters(network, next_version_path(Path(sys.argv[1])), {"base_model": "tiny", "base_sha256": "x"})
"""


def _race(tmp_path, script: str, folder, count: int) -> None:
    go = tmp_path / "go"
    procs = [python(script, str(folder), str(writer), str(go), str(count)) for writer in (1, 2)]
    deadline = time.time() + 120
    while not all((tmp_path / f"ready{w}").exists() for w in (1, 2)) and time.time() < deadline:
        if any(proc.poll() is not None for proc in procs):
            break
        time.sleep(0.01)
    go.touch()  # both writers are loaded: they start together
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        if proc.returncode:
            raise DataLost(f"a writer failed: {err.strip().splitlines()[-1] if err.strip() else proc.returncode}")


def test_two_processes_exporting_into_one_folder_lose_nothing(tmp_path):
    folder, count = tmp_path / "shared", 12
    _race(tmp_path, RACE_EXPORT, folder, count)
    rows = read_prompts(folder)
    pairs = sorted((row["writer"], row["index"]) for row in rows)
    expected = [(w, i) for w in (1, 2) for i in range(count)]
    if pairs != expected or len({row["case"] for row in rows}) != len(rows):
        raise DataLost(f"{len(set(pairs))} of {len(expected)} exports left a prompt; cases {[r['case'] for r in rows]}")
    for row in rows:
        pixels = np.asarray(nib.load(folder / "imagesTr" / f"{row['case']}_0000.nii.gz").dataobj)
        if not np.all(pixels == 100 * row["writer"] + row["index"]):
            raise DataLost(f"the prompt of {row['case']} points at another export's image")
    if (folder / "incomplete").exists() and any((folder / "incomplete").iterdir()):
        raise DataLost(f"complete exports were set aside: {sorted(p.name for p in (folder / 'incomplete').iterdir())}")
    assert len(load_dataset(folder)) == len(expected)


def test_two_processes_saving_adapter_versions_never_overwrite(tmp_path):
    from napari_imedsam.model.weights import read_safetensors

    folder, count = tmp_path / "adapters" / "liver", 10
    _race(tmp_path, RACE_SAVE, folder, count)
    files = sorted(folder.glob("v*.safetensors"))
    saved = set()
    for path in files:
        tensors, header = read_safetensors(path)
        lora = next(v for k, v in tensors.items() if ".lora_" in k)
        if float(lora.flatten()[0]) != 100 * header["writer"] + header["index"]:
            raise DataLost(f"{path.name}: tensors of one save, header of another")
        saved.add((header["writer"], header["index"]))
    if len(files) != 2 * count or len(saved) != 2 * count:
        raise DataLost(f"{len(files)} version files, {len(saved)} distinct saves, for {2 * count} saves")


def test_export_killed_mid_write_leaves_nothing_that_looks_like_data(small_export):
    proc = python(SLOW_EXPORT, str(small_export))
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None:
        if any(p.name.startswith(".") for p in (small_export / "imagesTr").iterdir()):
            break
        time.sleep(0.01)
    time.sleep(0.3)
    assert proc.poll() is None, "the export finished before it could be killed"
    proc.kill()
    proc.communicate()
    lookalikes = [p.name for sub in ("imagesTr", "labelsTr") for p in (small_export / sub).iterdir()
                  if p.name.endswith(".nii.gz") and not DATA_FILE.match(p.name)]
    if lookalikes:
        raise DataLost(f"partial files end in .nii.gz (nnU-Net would read them): {lookalikes}")
    new = export_slices(small_export, [square_slice(9.0)])  # the next export cleans up after the dead one
    leftovers = [p.name for sub in ("imagesTr", "labelsTr") for p in (small_export / sub).iterdir() if p.name[0] == "."]
    if leftovers:
        raise DataLost(f"the next export left the dead writer's temporaries: {leftovers}")
    assert new == ["imedsam_00005"] and len(load_dataset(small_export)) == 4


def test_adapter_save_killed_mid_write_is_cleaned_by_the_next_run(tmp_path):
    from src_train.trainer import next_version_path

    folder = tmp_path / "adapters" / "liver"
    proc = python(KILLED_SAVE, str(folder))
    proc.communicate(timeout=120)
    assert proc.returncode == -9
    assert not list(folder.glob("v*.safetensors"))
    path = next_version_path(folder)  # what the next training run does before it saves
    leftovers = [p.name for p in folder.iterdir() if ".safetensors." in p.name]
    if leftovers or path.name != "v001.safetensors":
        raise DataLost(f"after a killed save: {leftovers}, next version {path.name}")


def test_torn_prompt_line_does_not_swallow_the_next_one(small_export):
    prompts = small_export / "prompts.jsonl"
    prompts.write_bytes(prompts.read_bytes()[:-20])  # a crash tore the last line (and its newline)
    new = export_slices(small_export, [square_slice(7.0)])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cases = [row["case"] for row in read_prompts(small_export)]
    if new[0] not in cases:
        raise DataLost(f"the prompt exported after a torn line is lost: {cases}")
    if not any("broken" in str(w.message) and "prompts.jsonl" in str(w.message) for w in caught):
        raise Silent("the torn line was dropped without a word")
    assert cases == ["imedsam_00001", "imedsam_00002", new[0]]


@pytest.mark.parametrize("where", ["image", "label", "prompts", "dataset.json"])
def test_export_running_out_of_space_leaves_the_dataset_as_it_was(small_export, monkeypatch, where):
    import napari_imedsam.io.export as export

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    real_write = export.write_array

    def write_array(path, *args, **kwargs):
        if (where == "image") == ("imagesTr" in str(path)):
            no_space()
        return real_write(path, *args, **kwargs)

    def append_half(path, lines):
        with open(path, "a") as handle:
            handle.write('{"case": "imedsam_000')
        no_space()

    if where in ("image", "label"):
        monkeypatch.setattr(export, "write_array", write_array)
    elif where == "prompts":
        monkeypatch.setattr(export, "_append_prompts", append_half)
    else:
        monkeypatch.setattr(export, "atomic_write", no_space)
    expect_refused(lambda: export.export_slices(small_export, [square_slice(5.0), square_slice(6.0)]), small_export)
    monkeypatch.undo()
    assert export_slices(small_export, [square_slice(5.0)]) and len(load_dataset(small_export)) == 4


def test_predict_running_out_of_space_writes_no_output(tmp_path, capsys, monkeypatch, tiny_model_file, png_image):
    import tifffile

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(tifffile, "imwrite", no_space)
    out = tmp_path / "out"
    out.mkdir()
    expect_error(capsys, ["predict", "--model", tiny_model_file, "--image", png_image, "--box", "5,5,40,40",
                          "--out", out / "mask.png", "--uncertainty", out / "unc.tif"],
                 mentions=["No space left"], watch=[out])


def test_predict_onto_a_full_disk(capsys, tiny_model_file, png_image, full_disk):
    expect_error(capsys, ["predict", "--model", tiny_model_file, "--image", png_image, "--box", "5,5,40,40",
                          "--out", full_disk / "mask.png"], mentions=["No space left"], watch=[full_disk])


def test_export_onto_a_full_disk(full_disk):
    expect_refused(lambda: export_slices(full_disk / "data", [square_slice()]), full_disk)


TRAIN = ["train", "--model", "tiny", "--epochs", "1", "--batch-size", "2", "--points", "64"]


def _trained_first(out: str) -> None:
    if "epoch" in out:
        raise DataLost("trained first and failed at the save: the run is lost")


@pytest.mark.parametrize("disk", ["full_disk", "readonly_dir"])
def test_train_checks_its_output_before_training(request, capsys, small_export, disk):
    folder = request.getfixturevalue(disk)
    before = {p.name for p in folder.iterdir()}
    code, err, out = run_cli(capsys, [*TRAIN, "--data", small_export, "--out", folder / "run"])
    _trained_first(out)
    expect = "No space left" if disk == "full_disk" else "cannot save"
    check_one_error(code, err, [expect])
    assert {p.name for p in folder.iterdir()} <= before  # the refused run left no folders


def test_train_keeps_the_weights_when_the_disk_fills_during_the_run(tmp_path, capsys, monkeypatch, small_export):
    import napari_imedsam.model.weights as weights

    out = tmp_path / "run"

    class FullDisk(io.FileIO):  # the disk fills while the weights are written: the write fails
        def write(self, data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def full_at_out(file, mode="r", *args, **kwargs):
        if str(file).startswith(str(out)) and "w" in mode:
            return FullDisk(file, mode.replace("b", ""))
        return open(file, mode, *args, **kwargs)

    monkeypatch.setattr(weights, "open", full_at_out, raising=False)  # the weights' own writer
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    code, err, _ = run_cli(capsys, [*TRAIN, "--data", small_export, "--out", out])
    line = check_one_error(code, err, ["No space left", "saved to"])
    rescued = line.split("saved to ")[1].split(" instead")[0]
    if not os.path.isfile(rescued) or not rescued.startswith(str(tmp_path)):
        raise DataLost(f"the weights are not where the message says: {line}")
    weights.read_safetensors(rescued)

"""Fixtures of the fault suite: a tiny model file, small images, a full disk and a read-only folder.

A full disk and a read-only folder are real tmpfs mounts where this process may mount (root on
Linux); a read-only folder falls back to chmod for other users; cases that need a mount are
skipped where none can be made (the patched-writer cases still cover running out of space).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from napari_imedsam.io.export import ExportSlice, export_slices
from napari_imedsam.model.registry import load_model
from napari_imedsam.model.weights import save_model


def untrained_tiny():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_model("tiny")


@pytest.fixture(scope="module")
def tiny_model_file(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    save_model(untrained_tiny().network, path, {"data": "fault suite"})
    return path


def write_png(path: Path, pixels: np.ndarray | None = None, seed: int = 0) -> Path:
    if pixels is None:
        pixels = np.random.default_rng(seed).integers(0, 255, (48, 48), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


@pytest.fixture
def png_image(tmp_path) -> Path:
    return write_png(tmp_path / "in" / "image.png")


def square_slice(value: float = 1.0, label: int = 1, size: int = 24, **fields) -> ExportSlice:
    """A small exportable slice: a square object of `label` on a constant image of `value`."""
    labels = np.zeros((size, size), np.int32)
    labels[4:16, 5:17] = label
    pixels = np.full((size, size), value, np.float32) + np.linspace(0.0, 1.0, size, dtype=np.float32)
    pixels[4:16, 5:17] += 10.0
    return ExportSlice(pixels, labels, {label: [5, 4, 16, 15]}, source="fault.nii.gz", **fields)


@pytest.fixture
def small_export(tmp_path) -> Path:
    """An export of three slices to train on or to damage."""
    folder = tmp_path / "data"
    export_slices(folder, [square_slice(float(i)) for i in range(3)])
    return folder


def _mount(path: Path, size: str, readonly: bool = False) -> bool:
    if os.name != "posix" or os.geteuid() != 0 or not shutil.which("mount"):
        return False
    path.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0777", "tmpfs", str(path)],
                            capture_output=True)
    if result.returncode != 0:
        return False
    if readonly:
        (path / "existing.txt").write_text("kept")
        subprocess.run(["mount", "-o", "remount,ro", str(path)], check=True, capture_output=True)
    return True


def _unmount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True)


@pytest.fixture
def full_disk(tmp_path):
    """A folder on a 256 KiB tmpfs that is already full."""
    path = tmp_path / "full"
    if not _mount(path, "256k"):
        pytest.skip("cannot mount a tmpfs here (needs root on Linux)")
    try:
        fd = os.open(path / "filler", os.O_WRONLY | os.O_CREAT)
        try:
            while os.write(fd, b"\0" * 4096):
                pass
        except OSError:
            pass
        finally:
            os.close(fd)
        yield path
    finally:
        _unmount(path)


@pytest.fixture
def readonly_dir(tmp_path):
    """A folder nobody may write in (a read-only tmpfs for root, chmod 0555 otherwise)."""
    path = tmp_path / "readonly"
    if os.name == "posix" and os.geteuid() != 0:
        path.mkdir()
        (path / "existing.txt").write_text("kept")
        path.chmod(0o555)
        yield path
        path.chmod(0o755)
        return
    if not _mount(path, "64k", readonly=True):
        pytest.skip("cannot make a read-only folder here")
    try:
        yield path
    finally:
        _unmount(path)

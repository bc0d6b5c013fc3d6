"""Readers/writers: atomic writes, NIfTI orientation round trip, slice selection."""

from __future__ import annotations

import os
import stat

import nibabel as nib
import numpy as np
import pytest

from napari_imedsam._atomic import atomic_write
from napari_imedsam.inference.preprocess import InputError
from napari_imedsam.io.images import read_image, select_slice, write_array


def test_failed_write_keeps_the_previous_file(tmp_path):
    target = tmp_path / "mask.png"
    target.write_bytes(b"previous")

    def crash(tmp: str) -> None:
        with open(tmp, "wb") as handle:
            handle.write(b"half")
        raise KeyboardInterrupt  # e.g. the user interrupts mid-write

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, crash)
    assert target.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["mask.png"]  # no temporary left behind


def test_written_files_get_normal_permissions(tmp_path):
    path = write_array(tmp_path / "m.png", np.ones((4, 4), bool))
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask


def test_nifti_volume_reads_in_napari_order_and_round_trips(tmp_path):
    xyz = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    affine = np.diag([0.5, 0.7, 3.0, 1.0])
    nib.save(nib.Nifti1Image(xyz, affine), tmp_path / "v.nii.gz")
    image = read_image(tmp_path / "v.nii.gz")
    assert image.data.shape == (6, 5, 4) and image.is_volume  # (z, y, x)
    np.testing.assert_allclose(image.spacing, (3.0, 0.7, 0.5), rtol=1e-6)
    np.testing.assert_array_equal(select_slice(image, 2), xyz[:, :, 2].T)
    write_array(tmp_path / "out.nii.gz", image.data, image)
    back = nib.load(tmp_path / "out.nii.gz")
    np.testing.assert_array_equal(np.asarray(back.dataobj), xyz)
    np.testing.assert_allclose(back.affine, affine)
    with pytest.raises(InputError, match="outside the volume"):
        select_slice(image, 6)


def test_rgb_png_is_2d_and_jpeg_masks_are_refused(tmp_path):
    from PIL import Image

    Image.fromarray(np.zeros((10, 12, 3), np.uint8)).save(tmp_path / "rgb.png")
    image = read_image(tmp_path / "rgb.png")
    assert image.rgb and not image.is_volume and select_slice(image, None).shape == (10, 12, 3)
    with pytest.raises(InputError, match="JPEG is lossy"):
        write_array(tmp_path / "mask.jpg", np.ones((4, 4), bool))


def test_dataset_folder_names_are_safe_distinct_and_stable():
    from napari_imedsam.io.export import dataset_folder_name

    assert dataset_folder_name("liver_ct") == "liver_ct"  # plain names stay as they are
    hashed = dataset_folder_name("Leber (T1)")
    assert hashed.startswith("leber_t1-") and len(hashed) == len("leber_t1-") + 8
    assert hashed == dataset_folder_name("Leber (T1)")
    names = ["..", ".", "", "肝臓", "脾臓", "Liver", "liver", "con", "a/../b", "x" * 300, "liver_ct-0123abcd"]
    folders = [dataset_folder_name(n) for n in names]
    assert len({f.lower() for f in folders}) == len(names)
    for folder in folders:
        assert folder and folder not in (".", "..") and not folder.startswith(".") and len(folder) <= 64
        assert all(c.isascii() and (c.isalnum() or c in "_.-") for c in folder)


def test_a_folder_of_per_structure_masks_pairs_each_with_its_image(tmp_path):
    """IMAGE.png with IMAGE_liver_000.png, IMAGE_spleen_000.png (the bundled CT slices' layout): one
    sample per mask; an image whose name extends another's keeps its own masks; strays are ignored."""
    from src_train.data import load_folder

    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    for name in ("ct", "ct_b"):
        write_array(images / f"{name}.png", np.full((20, 20), 50 if name == "ct" else 90, np.uint8))
    objects = {"ct_liver_000": (2, 8), "ct_spleen_000": (10, 16), "ct_b_aorta_000": (4, 9), "ct_b": (0, 3),
               "other_liver_000": (2, 8), "ct_empty_000": (0, 0)}
    for name, (r0, r1) in objects.items():
        mask = np.zeros((20, 20), np.uint8)
        mask[r0:r1, 5:12] = 255
        write_array(masks / f"{name}.png", mask)
    samples = load_folder(images, masks)
    assert [s.name for s in samples] == ["ct_liver_000", "ct_spleen_000", "ct_b", "ct_b_aorta_000"]
    assert [int(s.image[0, 0]) for s in samples] == [50, 50, 90, 90]
    np.testing.assert_allclose(samples[1].box_xyxy, [5, 10, 11, 15])

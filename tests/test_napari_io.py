"""npe2 reader/writer functions and sample data, without a viewer."""

from __future__ import annotations

import nibabel as nib
import numpy as np

from napari_imedsam._napari_io import get_nifti_reader, write_labels_nifti
from napari_imedsam._sample_data import ct_abdomen, load_ct_slice, phantom_3d


def test_nifti_reader_gives_scale_and_keeps_affine_then_writer_restores_it(tmp_path):
    affine = np.array([[0.7, 0, 0, -100], [0, 0.7, 0, -80], [0, 0, 3.0, 40], [0, 0, 0, 1]])
    xyz = np.random.default_rng(0).normal(size=(30, 20, 8)).astype(np.float32)
    path = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(xyz, affine), path)
    assert get_nifti_reader(str(tmp_path / "scan.png")) is None
    data, kwargs, kind = get_nifti_reader(str(path))(str(path))[0]
    assert kind == "image" and data.shape == (8, 20, 30)
    np.testing.assert_allclose(kwargs["scale"], (3.0, 0.7, 0.7), rtol=1e-6)
    np.testing.assert_allclose(kwargs["translate"], (40.0, -80.0, -100.0))  # the origin, (z, y, x)
    np.testing.assert_allclose(kwargs["metadata"]["affine"], affine)
    labels = np.zeros(data.shape, np.int32)
    labels[3, 5:9, 10:20] = 2
    out = tmp_path / "labels.nii.gz"
    assert write_labels_nifti(str(out), labels, {"metadata": kwargs["metadata"]}) == [str(out)]
    written = nib.load(out)
    np.testing.assert_allclose(written.affine, affine)
    np.testing.assert_array_equal(np.asarray(written.dataobj).T, labels)


def test_exported_slices_keep_the_scans_geometry(tmp_path):
    """A slice exported from a NIfTI scan (flipped axes, a rotation, spacings, an origin) keeps its place:
    every exported voxel maps to the same scanner position as the source voxel it came from (the export
    wrote diag(spacing) with no direction, no origin and a 1 mm slice), for slices along any axis."""
    from napari_imedsam.io.export import ExportSlice, export_slices, slice_affine

    turn = np.array([[np.cos(0.3), -np.sin(0.3), 0], [np.sin(0.3), np.cos(0.3), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = turn @ np.diag([-0.8, -0.7, 3.0])
    affine[:3, 3] = (101.5, 87.25, -42.0)
    path = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(np.random.default_rng(0).normal(size=(12, 10, 6)).astype(np.float32), affine), path)
    data, kwargs, _ = get_nifti_reader(str(path))(str(path))[0]  # napari (z, y, x) = (6, 10, 12)
    for axis, index in ((0, 3), (1, 4), (2, 7)):
        pixels = np.take(data, index, axis=axis)
        labels = np.zeros(pixels.shape, np.int32)
        labels[2, 5] = 1
        folder = tmp_path / f"export{axis}"
        export_slices(folder, [ExportSlice(pixels, labels, {1: [4, 1, 6, 3]}, slice_index=index, axis=axis,
                                           affine=slice_affine(kwargs["metadata"]["affine"], 3, axis, index))])
        written = nib.load(folder / "labelsTr" / "imedsam_00001.nii.gz")
        x, y, _ = np.argwhere(np.asarray(written.dataobj) == 1)[0]  # the exported voxel (column, row, 0)
        napari = [2, 5]
        napari.insert(axis, index)  # the same voxel in the scan, napari order
        source_world = affine @ [*napari[::-1], 1.0]
        np.testing.assert_allclose(written.affine @ [x, y, 0, 1.0], source_world, atol=1e-4)


def test_ct_samples_are_upright_with_expert_masks():
    layers = ct_abdomen()
    (image, meta, kind), (labels, label_meta, label_kind) = layers
    assert (kind, label_kind) == ("image", "labels") and image.shape == labels.shape == (512, 512)
    assert "CC BY 4.0" in meta["metadata"]["source"]
    names = set(label_meta["metadata"]["structures"].values())
    assert {"liver_000", "spleen_000", "aorta_000"} <= names
    for stem in ("amos_0006_90", "s0114_111"):
        slice_image, slice_labels, slice_names = load_ct_slice(stem)
        aorta = slice_labels == slice_names.index("aorta_000") + 1
        # upright (anterior up): the aorta lies in front of the spine, in the posterior (lower) half
        assert np.nonzero(aorta)[0].mean() > slice_image.shape[0] / 2, stem


def test_phantom_volume_has_exact_organ_and_lesion():
    (volume, meta, _), (labels, _, _) = phantom_3d()
    assert volume.shape == labels.shape and volume.ndim == 3
    assert set(np.unique(labels)) == {0, 1, 2}
    assert abs(volume[labels == 2].mean() - 200) < 5 and abs(volume[labels == 1].mean() - 120) < 5
    assert not labels[0].any() and not labels[-1].any()  # the organ ends inside the volume

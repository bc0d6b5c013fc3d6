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

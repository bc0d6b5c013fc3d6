"""`imedsam info` and `imedsam predict`: outputs by extension, NIfTI affines, one clear error message."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from napari_imedsam.cli import main
from napari_imedsam.model.weights import save_model

from .conftest import untrained


@pytest.fixture
def model_file(tmp_path):
    torch.manual_seed(0)
    return str(save_model(untrained().network, tmp_path / "tiny.safetensors", {"data": "test"}))


def test_info_prints_trainable_parameters_per_component(capsys, model_file):
    assert main(["info", "--model", model_file]) == 0
    out = capsys.readouterr().out
    for part in ("lora", "frequency_adapter", "prompt_encoder", "output_upscaling", "coarse_inr", "fine_inr"):
        assert part in out
    assert "total trainable" in out and "50,970" in out


def test_predict_png_writes_mask_uncertainty_and_size(tmp_path, model_file, capsys):
    image = tmp_path / "image.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (60, 80), dtype=np.uint8)).save(image)
    out, unc = tmp_path / "mask.png", tmp_path / "unc.tif"
    code = main(["predict", "--model", model_file, "--image", str(image), "--box", "10,10,50,40",
                 "--out", str(out), "--uncertainty", str(unc)])
    assert code == 0, capsys.readouterr().err
    assert np.asarray(Image.open(out)).shape == (60, 80)
    assert set(np.unique(np.asarray(Image.open(out)))) <= {0, 255}
    assert tifffile.imread(unc).dtype == np.float32
    sized = tmp_path / "big.png"
    assert main(["predict", "--model", model_file, "--image", str(image), "--box", "10,10,50,40",
                 "--out", str(sized), "--size", "120,160"]) == 0
    assert np.asarray(Image.open(sized)).shape == (120, 160)


def test_replacing_an_output_is_said_and_an_image_without_mask_is_named(tmp_path, model_file, capsys):
    image = tmp_path / "images" / "a.png"
    image.parent.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40), dtype=np.uint8)).save(image)
    out = tmp_path / "mask.png"
    out.write_bytes(b"precious")
    assert main(["predict", "--model", model_file, "--image", str(image), "--box", "5,5,30,30", "--out", str(out)]) == 0
    assert f"replaced the existing {out}" in capsys.readouterr().out
    masks = tmp_path / "masks"
    masks.mkdir()
    Image.fromarray(np.where(np.arange(40)[:, None] < 20, 255, 0).astype(np.uint8).repeat(40, 1)).save(masks / "a.png")
    Image.open(image).save(tmp_path / "images" / "b.png")  # no mask: said, not silently dropped
    assert main(["evaluate", "--model", model_file, "--images", str(tmp_path / "images"), "--masks", str(masks)]) == 0
    captured = capsys.readouterr()
    assert "1 objects" in captured.out and "not scored: b.png" in captured.err


def test_predict_nifti_slice_keeps_the_source_affine(tmp_path, model_file):
    volume = np.random.default_rng(0).normal(size=(40, 50, 6)).astype(np.float32)  # NIfTI (x, y, z)
    affine = np.diag([0.8, 0.8, 2.5, 1.0])
    affine[:3, 3] = [-10, 20, 5]
    source = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(volume, affine), source)
    out = tmp_path / "mask.nii.gz"
    assert main(["predict", "--model", model_file, "--image", str(source), "--slice", "3",
                 "--box", "5,5,30,25", "--out", str(out)]) == 0
    written = nib.load(out)
    np.testing.assert_allclose(written.affine, affine)
    data = np.asarray(written.dataobj)
    assert data.shape == volume.shape
    assert not data[..., [0, 1, 2, 4, 5]].any()  # only slice z = 3 carries the result


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--box", "500,500,600,600"], "lies outside"),
     (["--box", "10,10,10,20"], "zero or negative size"),
     (["--box", "1,2,3"], "4 comma-separated numbers"),
     (["--image", "missing.png"], "no such file")],
)
def test_predict_bad_input_exits_nonzero_with_one_message(tmp_path, model_file, capsys, args, message):
    image = tmp_path / "image.png"
    Image.fromarray(np.zeros((60, 80), np.uint8)).save(image)
    base = {"--image": str(image), "--box": "10,10,50,40"}
    for flag, value in zip(args[::2], args[1::2]):
        base[flag] = value if flag != "--image" else str(tmp_path / value)
    argv = ["predict", "--model", model_file, "--out", str(tmp_path / "m.png")]
    for flag, value in base.items():
        argv += [flag, value]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("imedsam: error:") and message in err[0]
    assert not (tmp_path / "m.png").exists()


def test_unreadable_and_4d_images_are_refused(tmp_path, model_file, capsys):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG not really")
    assert main(["predict", "--model", model_file, "--image", str(broken), "--box", "1,1,5,5",
                 "--out", str(tmp_path / "m.png")]) == 2
    assert "cannot read image" in capsys.readouterr().err
    four_d = tmp_path / "fmri.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 4, 3), np.float32), np.eye(4)), four_d)
    assert main(["predict", "--model", model_file, "--image", str(four_d), "--slice", "0", "--box", "1,1,5,5",
                 "--out", str(tmp_path / "m.png")]) == 2
    assert "4D image" in capsys.readouterr().err
    volume = tmp_path / "vol.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 4), np.float32), np.eye(4)), volume)
    assert main(["predict", "--model", model_file, "--image", str(volume), "--box", "1,1,5,5",
                 "--out", str(tmp_path / "m.png")]) == 2
    assert "choose one with --slice" in capsys.readouterr().err


def test_untrained_config_is_announced(capsys):
    assert main(["info", "--model", "tiny"]) == 0
    assert "imedsam: warning: model 'tiny': untrained weights" in capsys.readouterr().err


def test_missing_model_file_is_one_clear_error(tmp_path, capsys):
    image = tmp_path / "image.png"
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(image)
    assert main(["predict", "--model", str(tmp_path / "nope.pth"), "--image", str(image), "--box", "1,1,9,9",
                 "--out", str(tmp_path / "m.png")]) == 2
    assert "no such model file" in capsys.readouterr().err


def test_predict_on_a_bundled_sample_reports_dice(tmp_path, model_file, capsys):
    out = tmp_path / "liver.png"
    assert main(["predict", "--model", model_file, "--image", "sample:ct_abdomen/liver_000", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "Dice against the sample's expert mask:" in printed
    assert np.asarray(Image.open(out)).shape == (512, 512)
    assert main(["predict", "--model", model_file, "--image", "sample:ct_abdomen/kidney", "--out", str(out)]) == 2
    assert "has no structure 'kidney'" in capsys.readouterr().err
    assert main(["predict", "--model", model_file, "--image", "sample:ct_abdomen", "--out", str(out)]) == 2
    assert "--box x0,y0,x1,y1 is required" in capsys.readouterr().err


def test_mirror_averaging_is_an_option_of_predict_and_evaluate_only(tmp_path, model_file, capsys):
    out = tmp_path / "liver.png"
    args = ["--model", model_file, "--image", "sample:ct_abdomen/liver_000", "--out", str(out)]
    assert main(["predict", "--mirror", *args]) == 0
    assert "Dice against the sample's expert mask:" in capsys.readouterr().out
    assert np.asarray(Image.open(out)).shape == (512, 512)
    with pytest.raises(SystemExit):
        main(["info", "--model", model_file, "--mirror"])


def test_headless_demo_prints_dice_and_writes_a_panel(tmp_path, model_file, capsys):
    from napari_imedsam.demo import main as demo

    assert demo(["--headless", "--model", model_file, "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert printed.count("Dice") >= 5 and (tmp_path / "demo_panel.png").exists()


def test_predict_on_the_phantom_volume_sample_picks_the_largest_slice(tmp_path, model_file, capsys):
    out = tmp_path / "lesion.nii.gz"
    assert main(["predict", "--model", model_file, "--image", "sample:phantom_3d/lesion", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "slice 20 (the structure's largest cross-section" in printed
    assert "Dice against the sample's expert mask:" in printed
    assert nib.load(out).shape == (128, 128, 40)  # written back into the volume, NIfTI (x, y, z) order
    assert main(["predict", "--model", model_file, "--image", "sample:phantom_3d/organ", "--slice", "0",
                 "--out", str(out)]) == 2
    assert "does not appear on slice 0" in capsys.readouterr().err
    assert main(["predict", "--model", model_file, "--image", "sample:phantom_4d", "--out", str(out)]) == 2
    assert "known: ct_abdomen, ct_thorax, ct_pelvis, phantom_3d" in capsys.readouterr().err


def test_os_errors_read_as_plain_words_with_the_fix(tmp_path):
    import errno
    import os

    from napari_imedsam.errors import os_error_text
    from napari_imedsam.widgets.workers import error_message

    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "work" / "exports" / "case.nii.gz"))
    text = error_message(full)  # the dock's words for a failed export or fine-tune
    assert text.startswith(f"the disk holding {full.filename} is full (No space left on device, ")
    assert "MB free" in text or "KB free" in text
    assert "choose a folder on another disk" in text
    assert os_error_text(OSError(errno.EROFS, os.strerror(errno.EROFS), "/mnt/ro/work")) == \
        "/mnt/ro/work is on a read-only file system: choose a folder you can write to"


def test_evaluate_baselines_say_when_the_backbones_own_decoder_was_never_trained(tmp_path, capsys):
    """demo trained its I-MedSAM heads only: its SAM mask decoder's Dice (about 0.05) is no reference, and
    the line says so instead of printing it as one."""
    import shutil

    source = Path(__file__).parents[1] / "sample_data" / "ct_slices"
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    shutil.copy(source / "images" / "amos_0006_90.png", tmp_path / "images")
    shutil.copy(source / "masks" / "amos_0006_90_liver_000.png", tmp_path / "masks")
    assert main(["evaluate", "--model", "demo", "--images", str(tmp_path / "images"), "--masks",
                 str(tmp_path / "masks"), "--baselines"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert "the backbone's own mask decoder Dice" in line and "never trained for this model" in line, line

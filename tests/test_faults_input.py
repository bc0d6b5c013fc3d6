"""Fault injection, part 2: hostile command lines. One `imedsam: error:` line (exit 2) and nothing
written for bad input; warnings for input that is valid but cannot give a meaningful result."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile

from .fault_fixtures import write_png
from .faults import DataLost, Silent, Unclear, check_one_error, expect_error, run_cli

TRAIN = ["train", "--model", "tiny", "--epochs", "1", "--batch-size", "2", "--points", "64"]


def _predict(model: Path, image: Path, out: Path, *extra) -> list:
    return ["predict", "--model", model, "--image", image, "--box", "5,5,40,40", "--out", out, *extra]


PREDICT_CASES = {  # name: (extra arguments or a replacement --out, words the message must contain)
    "size 1,1": (["--size", "1,1"], ["--size"]),
    "size 0,0": (["--size", "0,0"], ["--size"]),
    "window nan": (["--window", "nan,nan"], ["--window"]),
    "input size 0": (["--input-size", "0"], ["--input-size"]),
    "unknown uncertainty type": (["--uncertainty", "{out}/b.xyz"], [".xyz"]),
    "uncertainty onto the mask": (["--uncertainty", "{out}/mask.png"], ["same file"]),
}


@pytest.mark.parametrize("case", list(PREDICT_CASES))
def test_predict_refuses_before_writing(tmp_path, capsys, tiny_model_file, png_image, case):
    extra, mentions = PREDICT_CASES[case]
    out = tmp_path / "out"
    out.mkdir()
    extra = [str(a).format(out=out) for a in extra]
    expect_error(capsys, _predict(tiny_model_file, png_image, out / "mask.png", *extra), mentions, watch=[out])


def test_predict_refuses_to_overwrite_its_input(capsys, tiny_model_file, png_image):
    expect_error(capsys, _predict(tiny_model_file, png_image, png_image), ["is the input image"],
                 watch=[png_image.parent])


def test_predict_out_naming_a_directory(tmp_path, capsys, tiny_model_file, png_image):
    out = tmp_path / "out"
    out.mkdir()
    expect_error(capsys, _predict(tiny_model_file, png_image, out), ["is a directory"], watch=[out])


def test_predict_out_in_a_read_only_folder(capsys, tiny_model_file, png_image, readonly_dir):
    expect_error(capsys, _predict(tiny_model_file, png_image, readonly_dir / "mask.png"), [str(readonly_dir)],
                 watch=[readonly_dir])


@pytest.mark.parametrize("which", ["--model", "--image"])
def test_a_directory_given_as_a_file_is_named_as_such(tmp_path, capsys, tiny_model_file, png_image, which):
    folder = tmp_path / "folder.png"
    folder.mkdir()
    args = {"--model": tiny_model_file, "--image": png_image, which: folder}
    expect_error(capsys, _predict(args["--model"], args["--image"], tmp_path / "mask.png"),
                 [str(folder), "is a directory"], watch=[tmp_path])


def test_negative_box_coordinates_are_accepted(tmp_path, capsys, tiny_model_file, png_image):
    out = tmp_path / "mask.png"
    argv = ["predict", "--model", tiny_model_file, "--image", png_image, "--box", "-5,0,40,40", "--out", out]
    code, err, _ = run_cli(capsys, argv)
    if code != 0 or not out.exists():
        raise Unclear(f"a box starting left of the image was refused: {err.strip()[-200:]!r}")


@pytest.mark.parametrize("pixels", ["constant", "nan"])
def test_an_image_without_contrast_gets_a_warning(tmp_path, capsys, tiny_model_file, pixels):
    image = tmp_path / "flat.tif"
    tifffile.imwrite(image, np.full((48, 48), 7.0 if pixels == "constant" else np.nan, np.float32))
    code, err, _ = run_cli(capsys, _predict(tiny_model_file, image, tmp_path / "mask.png"))
    assert code == 0, err
    if "no contrast" not in err:
        raise Silent("a mask from an image without contrast, without a word")


@pytest.mark.parametrize("options", [["--epochs", "0"], ["--epochs", "-1"], ["--batch-size", "0"],
                                     ["--max-seconds", "0"], ["--val-fraction", "-1"]])
def test_train_refuses_meaningless_options(tmp_path, capsys, small_export, options):
    out = tmp_path / "run"
    expect_error(capsys, [*TRAIN, "--data", small_export, "--out", out, *options], [options[0].lstrip("-")],
                 watch=[out])


def test_train_name_cannot_leave_the_output_folder(tmp_path, capsys, small_export):
    out = tmp_path / "a" / "b" / "run"
    code, err, _ = run_cli(capsys, [*TRAIN, "--data", small_export, "--out", out, "--name", "../../x"])
    escaped = [p for p in (tmp_path / "a").rglob("*.safetensors") if out not in p.parents]
    if escaped:
        raise DataLost(f"--name ../../x wrote outside --out: {escaped}")
    check_one_error(code, err, ["--name"])


def test_train_out_naming_a_file(tmp_path, capsys, small_export):
    out = tmp_path / "run.txt"
    out.write_text("a file")
    expect_error(capsys, [*TRAIN, "--data", small_export, "--out", out], [str(out)], watch=[tmp_path / "data"])


def _folders(tmp_path: Path, size: tuple[int, int] = (48, 48)) -> tuple[Path, Path]:
    images, masks = tmp_path / "eval" / "images", tmp_path / "eval" / "masks"
    for name, seed in (("a", 0), ("b", 1)):
        write_png(images / f"{name}.png", seed=seed)
        mask = np.zeros(size, np.uint8)
        mask[10:30, 12:34] = 255
        write_png(masks / f"{name}.png", mask)
    return images, masks


def test_evaluate_a_missing_images_folder(tmp_path, capsys, tiny_model_file):
    _, masks = _folders(tmp_path)
    expect_error(capsys, ["evaluate", "--model", tiny_model_file, "--images", tmp_path / "nope", "--masks", masks],
                 [str(tmp_path / "nope")])


def test_evaluate_a_mask_of_another_size_names_the_file(tmp_path, capsys, tiny_model_file):
    images, masks = _folders(tmp_path, size=(32, 32))
    expect_error(capsys, ["evaluate", "--model", tiny_model_file, "--images", images, "--masks", masks],
                 [str(masks / "a.png")])


@pytest.mark.parametrize("size", ["1,1", "0,0"])
def test_evaluate_tiny_output_sizes(tmp_path, capsys, tiny_model_file, size):
    images, masks = _folders(tmp_path)
    expect_error(capsys, ["evaluate", "--model", tiny_model_file, "--images", images, "--masks", masks,
                          "--size", size], ["--size"])


def test_evaluate_json_is_strict_json(tmp_path, capsys, monkeypatch, tiny_model_file):
    import napari_imedsam.evaluation as evaluation

    monkeypatch.setattr(evaluation, "hd95", lambda *args, **kwargs: float("inf"))  # e.g. an empty prediction
    images, masks = _folders(tmp_path)
    code, err, out = run_cli(capsys, ["evaluate", "--model", tiny_model_file, "--images", images, "--masks", masks,
                                      "--json"])
    assert code == 0, err

    def refuse(constant: str):
        raise Silent(f"evaluate --json printed {constant}, which is not JSON")

    rows = [json.loads(line, parse_constant=refuse) for line in out.strip().splitlines()]
    assert rows[-1]["hd95"] is None and rows[0]["hd95"] is None


@pytest.mark.parametrize("kind", ["a file", "read-only"])
def test_cache_dir_that_cannot_be_used(tmp_path, capsys, monkeypatch, request, kind):
    import pooch

    def no_network(*args, **kwargs):
        raise AssertionError("tried to download")

    monkeypatch.setattr(pooch, "retrieve", no_network)
    if kind == "a file":
        cache = tmp_path / "cache.txt"
        cache.write_text("not a folder")
    else:
        cache = request.getfixturevalue("readonly_dir")
    monkeypatch.setenv("IMEDSAM_CACHE_DIR", str(cache))
    expect_error(capsys, ["info", "--model", "sam_vit_b"], ["IMEDSAM_CACHE_DIR", str(cache)])

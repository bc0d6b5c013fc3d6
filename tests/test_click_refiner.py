"""The click refiner: an untrained one is exactly the walker, its correction stays in its window and
only follows clicks the mask disagreed with, training saves a version the predictor uses, and the
bundled one ships with `demo`."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_imedsam.errors import CheckpointError
from napari_imedsam.inference.boxes import box_of_mask
from napari_imedsam.inference.click_refine import refine_after_click, refiner_window
from napari_imedsam.inference.clicks import correct_with_clicks
from napari_imedsam.inference.predictor import Predictor
from napari_imedsam.io.phantoms import ellipse_phantoms
from napari_imedsam.model.click_refiner import ClickRefiner, ClickRefinerConfig, load_click_refiner
from src_train.click_refiner import ClickRefinerOptions, train_click_refiner
from src_train.data import Sample

SMALL = ClickRefinerConfig(size=32, widths=(8, 16))


def _disk_case(size: int = 64):
    rows, cols = np.mgrid[:size, :size]
    truth = (rows - 32) ** 2 + (cols - 32) ** 2 <= 15 ** 2
    image = np.where(truth, 0.8, 0.2).astype(np.float32)
    probability = np.where((rows - 32) ** 2 + (cols - 32) ** 2 <= 11 ** 2, 0.95, 0.05).astype(np.float32)
    return image, probability, truth


def _pushing(config: ClickRefinerConfig = SMALL, bias: float = 8.0) -> ClickRefiner:
    refiner = ClickRefiner(config).eval()
    with torch.no_grad():
        refiner.out.bias.fill_(bias)  # a refiner that makes its whole window object
    return refiner


def test_an_untrained_refiner_is_exactly_the_walker():
    image, probability, _ = _disk_case()
    click = np.array([[32.0, 19.0, 1.0]])  # in the missed ring, above the mask
    box = np.array([16.0, 16.0, 48.0, 48.0])
    walker = correct_with_clicks(probability, image, click)
    refiner = ClickRefiner(SMALL).eval()
    refined = correct_with_clicks(probability, image, click, refine=lambda walked, clicks: refine_after_click(
        refiner, walked, probability, None, lambda w: image[w[0]:w[1], w[2]:w[3]], box, clicks))
    np.testing.assert_array_equal(refined > 0.5, walker > 0.5)  # the same mask; probabilities differ
    np.testing.assert_allclose(refined, walker, atol=1.1e-3)  # only by the logit's clip to [0.001, 0.999]
    assert (refined > 0.5).sum() > (probability > 0.5).sum()  # and the walker did grow the mask


def test_the_refiner_changes_only_its_window_and_only_after_a_click_the_mask_disagreed_with():
    image = np.full((200, 200), 0.2, np.float32)
    image[90:116, 90:116] = 0.8  # the object reaches 6 px further right and down than the mask
    probability = np.zeros((200, 200), np.float32)
    probability[90:110, 90:110] = 0.9
    box = np.array([88.0, 88.0, 112.0, 112.0])
    refiner = _pushing()
    read = lambda w: image[w[0]:w[1], w[2]:w[3]]  # noqa: E731

    def refine(walked, clicks):
        return refine_after_click(refiner, walked, probability, None, read, box, clicks)

    agreeing = np.array([[100.0, 100.0, 1.0]])
    np.testing.assert_array_equal(correct_with_clicks(probability, image, agreeing, refine=refine), probability)
    missed = np.array([[113.0, 100.0, 1.0]])
    refined = correct_with_clicks(probability, image, missed, refine=refine)
    r0, r1, c0, c1 = refiner_window(box, missed, probability.shape, SMALL)
    outside = np.ones_like(probability, bool)
    outside[r0:r1, c0:c1] = False
    assert (refined[r0:r1, c0:c1] > 0.5).all()  # the pushing refiner filled its window ...
    np.testing.assert_array_equal(refined[outside], probability[outside])  # ... and nothing else
    assert 100 < (r1 - r0) * (c1 - c0) < 200 * 200 / 4


def test_a_file_that_is_not_a_click_refiner_is_refused(tmp_path):
    from napari_imedsam.model.weights import atomic_save_safetensors

    path = atomic_save_safetensors({"x": torch.zeros(1)}, tmp_path / "other.safetensors", {"kind": "corrector"})
    with pytest.raises(CheckpointError, match="not a click-refiner file"):
        load_click_refiner(path)


@pytest.fixture(scope="module")
def trained(fitted, tmp_path_factory):
    loaded, _, _ = fitted
    samples = [Sample(image, mask, box_of_mask(mask), f"e{i}") for i, (image, mask) in
               enumerate(ellipse_phantoms(10, seed=31))]
    options = ClickRefinerOptions(steps=12, rounds=2, batch_size=8, validate_every=6, max_clicks=3, config=SMALL)
    out = tmp_path_factory.mktemp("click_refiner")
    return loaded, train_click_refiner(loaded, samples, options, out, name="phantoms"), out


def test_training_saves_a_version_the_predictor_uses(trained):
    loaded, report, out = trained
    assert report.path == out / "click_refiners" / "phantoms" / "v001.safetensors" and report.steps == 12
    assert {"dice_0", "dice_1", "dice_3", "score"} <= set(report.metrics_before)
    refiner = load_click_refiner(report.path)
    assert refiner.config == SMALL and refiner.header["metrics"] == report.metrics
    assert refiner.header["helps"] == report.helps and refiner.header["base_sha256"] == loaded.weights_sha256
    if report.helps:
        assert report.metrics["score"] > report.metrics_before["score"]
    with_refiner = loaded.with_click_refiner(report.path)
    assert with_refiner.click_refiner is not None and loaded.click_refiner is None
    image, mask = ellipse_phantoms(1, seed=77)[0]
    box = box_of_mask(mask)
    rows, cols = np.nonzero(mask)
    click = np.array([[cols.mean(), rows.mean(), 1.0]])
    used = Predictor(with_refiner).predict(image, box, points=click).refined_prob
    bypassed = Predictor(with_refiner, click_refiner=False).predict(image, box, points=click).refined_prob
    walker = Predictor(loaded).predict(image, box, points=click).refined_prob
    np.testing.assert_array_equal(bypassed, walker)
    assert used.shape == walker.shape


def test_demo_ships_its_click_refiner_and_it_is_used_by_default():
    import warnings

    from napari_imedsam.model.registry import load_model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = load_model("demo", device="cpu")
    refiner = loaded.click_refiner
    assert isinstance(refiner, ClickRefiner) and refiner.header["base_sha256"] == loaded.weights_sha256
    assert refiner.header["helps"] is True
    assert Predictor(loaded).click_refiner is refiner and Predictor(loaded, click_refiner=False).click_refiner is None


def test_cli_trains_a_click_refiner(tmp_path, capsys):
    from napari_imedsam.cli import main

    from .conftest import phantom_folders

    phantom_folders(tmp_path, 6, seed=5)
    assert main(["train", "--model", "tiny", "--mode", "clicks", "--data", str(tmp_path), "--steps", "3",
                 "--out", str(tmp_path / "out"), "--name", "ellipses"]) == 0
    out = capsys.readouterr().out
    path = tmp_path / "out" / "click_refiners" / "ellipses" / "v001.safetensors"
    assert "held-back Dice after 0 / 1 / 3 / 5 clicks: walker alone" in out and str(path) in out
    assert load_click_refiner(path).header["steps"] == 3
    assert main(["train", "--model", "tiny", "--mode", "clicks", "--data", str(tmp_path), "--steps", "0",
                 "--out", str(tmp_path / "out")]) == 2
    assert "steps must be a whole number" in capsys.readouterr().err
    assert main(["train", "--model", "tiny", "--mode", "clicks", "--data", str(tmp_path), "--rounds", "0",
                 "--out", str(tmp_path / "out")]) == 2
    assert "rounds must be a whole number" in capsys.readouterr().err


def test_a_click_gets_the_refiner_averaged_over_the_region_s_mirror_images():
    """`flip_averaged` is the mean of the network's answers on the region and its three mirror images,
    each mirrored back: a mirrored input gives the mirrored answer."""
    torch.manual_seed(0)
    refiner = ClickRefiner(ClickRefinerConfig(size=16, widths=(4, 8))).eval()
    torch.nn.init.normal_(refiner.out.weight)
    maps = torch.rand(1, 8, 16, 16)
    with torch.no_grad():
        averaged = refiner.flip_averaged(maps)
        by_hand = (refiner(maps) + refiner(maps.flip(-1)).flip(-1) + refiner(maps.flip(-2)).flip(-2)
                   + refiner(maps.flip(-1, -2)).flip(-1, -2)) / 4
        assert torch.allclose(averaged, by_hand, atol=1e-5)
        assert torch.allclose(refiner.flip_averaged(maps.flip(-1)), averaged.flip(-1), atol=1e-5)
        assert not torch.allclose(averaged, refiner(maps), atol=1e-3)

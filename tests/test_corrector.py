"""The Dual False Corrector: only suspicious pixels change, training saves a loadable version that
refuses another base, and suggestions come as regions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_imedsam.errors import CheckpointError
from napari_imedsam.inference.boxes import box_of_mask
from napari_imedsam.inference.correction import suggest
from napari_imedsam.inference.predictor import Predictor
from napari_imedsam.io.phantoms import ellipse_phantoms
from napari_imedsam.model.corrector import CorrectorConfig, DualFalseCorrector, correct, load_corrector, stack_maps
from src_train.corrector import CorrectorOptions, train_corrector
from src_train.data import Sample


def test_only_suspicious_pixels_can_flip():
    torch.manual_seed(0)
    corrector = DualFalseCorrector(CorrectorConfig(size=32)).eval()
    refined = np.zeros((40, 40), np.float32)
    refined[10:30, 10:30] = 0.9
    uncertainty = np.zeros((40, 40), np.float32)
    uncertainty[10:12, 10:30] = 0.2  # doubt only along the top edge
    maps = stack_maps(np.full((40, 40), 0.5, np.float32), refined, uncertainty, np.ones((40, 40)))
    untrained = correct(corrector, maps, uncertainty)  # its heads start at "flip nothing"
    assert not untrained.remove.any() and not untrained.add.any()
    np.testing.assert_array_equal(untrained.corrected, refined > 0.5)
    with torch.no_grad():  # a corrector that wants to flip everything
        corrector.out.bias.fill_(10.0)
    result = correct(corrector, maps, uncertainty)
    changed = result.corrected != (refined > 0.5)
    assert changed.any() and not changed[15:, :].any()  # nothing below the suspicious band (+1 px) moves
    assert result.remove[10:12, 10:30].all() and not result.add[20:, :].any()


@pytest.fixture(scope="module")
def trained(fitted, tmp_path_factory):
    loaded, _, _ = fitted
    samples = [Sample(image, mask, box_of_mask(mask), f"e{i}") for i, (image, mask) in
               enumerate(ellipse_phantoms(12, seed=21))]
    options = CorrectorOptions(steps=40, batch_size=8, validate_every=20, boxes_per_sample=2,
                               config=CorrectorConfig(size=32, widths=(8, 16)))
    out = tmp_path_factory.mktemp("corrector")
    return loaded, samples, train_corrector(loaded, samples, options, out, name="phantoms"), out


def test_training_saves_a_version_that_loads_only_on_its_base(trained, fitted):
    loaded, samples, report, out = trained
    assert report.path == out / "correctors" / "phantoms" / "v001.safetensors" and report.steps == 40
    assert set(report.before) == {"dice", "precision", "recall"}
    if report.helps:
        assert report.after["dice"] > report.before["dice"]
    corrector = load_corrector(report.path, base_sha256=loaded.weights_sha256)
    # what the report and the file's header say is what the saved weights score, helping or not
    assert corrector.header["metrics"] == report.after and corrector.header["helps"] == report.helps
    with pytest.raises(CheckpointError, match="another base model"):
        load_corrector(report.path, base_sha256="0" * 64)
    from napari_imedsam.model.weights import atomic_save_safetensors, read_safetensors

    tensors, header = read_safetensors(report.path)  # a file of the first corrector (no U-Net trunk)
    header["corrector"] = {"width": 24, "depth": 4, "threshold": 0.02, "size": 128}
    old = out / "first_corrector.safetensors"
    atomic_save_safetensors(tensors, old, header)
    with pytest.raises(CheckpointError, match="train it again"):
        load_corrector(old)
    image, mask = ellipse_phantoms(1, seed=99)[0]
    prediction = Predictor(loaded).predict(image, box_of_mask(mask))
    suggestions = suggest(corrector, prediction, image)
    assert suggestions.corrected_mask.shape == mask.shape
    refined = prediction.refined_mask
    np.testing.assert_array_equal(suggestions.corrected_mask, (refined & (suggestions.remove == 0))
                                  | (suggestions.add > 0))
    assert not (suggestions.remove > 0)[~refined].any() and not (suggestions.add > 0)[refined].any()


def test_the_corrector_stops_at_its_time_limit_after_a_step_and_validates_that_step(fitted, tmp_path, monkeypatch):
    """A fake clock, one second per reading: with a 2.5 s limit the run stops after step 3 (of 40, the
    first validation due at 20) and validates that last step before saving, as a run that ends on its
    step count does."""
    from src_train import corrector as corrector_training

    loaded, _, _ = fitted
    readings = iter(range(1000))
    monkeypatch.setattr(corrector_training, "_clock", lambda: float(next(readings)), raising=False)
    validated = []
    real_validate = corrector_training.validate
    monkeypatch.setattr(corrector_training, "validate", lambda c, e: validated.append(1) or real_validate(c, e))
    samples = [Sample(image, mask, box_of_mask(mask), f"e{i}") for i, (image, mask) in
               enumerate(ellipse_phantoms(4, seed=3))]
    options = CorrectorOptions(steps=40, batch_size=4, validate_every=20, boxes_per_sample=1, max_seconds=2.5,
                               config=CorrectorConfig(size=32, widths=(8, 16)))
    report = train_corrector(loaded, samples, options, tmp_path, name="timed")
    assert report.steps == 3 and report.path.is_file()
    assert len(validated) == 1 + 1 + (0 if report.helps else 1)  # before, the last step (and the saved weights)


def test_accepted_suggestions_are_user_edits_and_undo_as_one_step():
    from napari_imedsam.inference import suggestions
    from napari_imedsam.inference.session import AnnotationSession

    from .test_session import fake_result

    session = AnnotationSession(None, np.zeros((20, 20), np.float32), np.zeros((20, 20), np.int32))
    prob = np.zeros((20, 20), np.float32)
    prob[4:14, 4:14] = 0.9
    result = fake_result(1, prob)
    result.remove = np.zeros((20, 20), np.int32)
    result.remove[4:6, 4:14] = 1  # the top rows are a false positive
    result.add = np.zeros((20, 20), np.int32)
    result.add[14:16, 4:14] = 1  # two rows below are missed
    session.apply(result)
    assert suggestions.suggestion_map(session, None)[15, 8] == 2
    found = suggestions.suggestion_at(session, None, 15, 8)
    assert found[1:] == ("add", 1)
    assert suggestions.accept(session, *found) == 20
    assert (session.labels[14:16, 4:14] == 1).all() and session.user_edited[14:16, 4:14].all()
    assert suggestions.accept_all(session, None) == 20  # the removal
    assert not session.labels[4:6].any()
    again = fake_result(1, prob)  # the model again: what the user accepted stays
    session.apply(again)
    assert (session.labels[14:16, 4:14] == 1).all() and not session.labels[4:6].any()
    session.undo()  # the model result
    session.undo()  # the removal
    assert (session.labels[4:6, 4:14] == 1).all() and not session.user_edited[4:6].any()
    assert suggestions.suggestion_map(session, None)[4, 8] == 1  # the undone suggestion is shown again
    session.undo()  # the addition
    assert not session.labels[14:16].any() and not session.user_edited.any()
    assert suggestions.suggestion_map(session, None)[15, 8] == 2


def test_accept_all_is_one_undo_step_over_every_object():
    from napari_imedsam.inference import suggestions
    from napari_imedsam.inference.session import AnnotationSession

    from .test_session import fake_result

    session = AnnotationSession(None, np.zeros((20, 40), np.float32), np.zeros((20, 40), np.int32))
    for label, cols in ((1, slice(2, 12)), (2, slice(22, 32))):
        prob = np.zeros((20, 40), np.float32)
        prob[4:14, cols] = 0.9
        result = fake_result(label, prob)
        result.remove = np.zeros((20, 40), np.int32)
        result.remove[4:6, cols] = 1
        result.add = np.zeros((20, 40), np.int32)
        result.add[14:16, cols] = 1
        session.apply(result)
    before = session.labels.copy()
    assert suggestions.accept_all(session, None) == 80  # two objects, a removal and an addition each
    session.undo()  # one Shift-Z takes all of it back
    np.testing.assert_array_equal(session.labels, before)
    assert not session.user_edited.any() and (suggestions.suggestion_map(session, None) > 0).sum() == 80


def test_cli_trains_a_corrector_and_evaluate_reports_the_corrected_dice(tmp_path, capsys):
    import json

    from napari_imedsam.cli import main

    from .conftest import phantom_folders

    images, masks = phantom_folders(tmp_path, 6, seed=5)
    assert main(["train", "--model", "tiny", "--mode", "corrector", "--data", str(tmp_path), "--steps", "5",
                 "--out", str(tmp_path / "out"), "--name", "ellipses"]) == 0
    out = capsys.readouterr().out
    path = tmp_path / "out" / "correctors" / "ellipses" / "v001.safetensors"
    assert "held-back Dice: refined" in out and str(path) in out
    assert main(["evaluate", "--model", "tiny", "--corrector", str(path), "--images", str(images), "--masks",
                 str(masks), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {"corrected_dice", "precision", "recall", "corrected_precision", "corrected_recall"} <= set(summary)
    assert 0.0 <= summary["corrected_dice"] <= 1.0
    assert main(["train", "--model", "tiny", "--mode", "corrector", "--data", str(tmp_path), "--steps", "0",
                 "--out", str(tmp_path / "out")]) == 2
    assert "steps must be a whole number" in capsys.readouterr().err
    assert main(["evaluate", "--model", "demo", "--corrector", str(path), "--images", str(images), "--masks",
                 str(masks)]) == 2  # trained on another base model
    assert "another base model" in capsys.readouterr().err


def test_training_augmentation_keeps_maps_and_targets_aligned_and_probabilities_valid():
    """Flips move the maps and the expert mask together; the image is jittered, the probability stays a
    probability on the same side of 0.5, the uncertainty stays in [0, 1]; the box channel is untouched."""
    from src_train.corrector import augment

    maps = torch.zeros(4, 6, 16, 16)
    truth = torch.zeros(4, 16, 16)
    truth[:, 2:6, 3:9] = 1.0  # an off-centre object: any flip moves it
    maps[:, :3] = 0.5
    maps[:, 3] = 0.1 + 0.8 * truth  # the refined probability agrees with the expert
    maps[:, 4] = 0.5
    maps[:, 5] = truth  # the box channel marks the same pixels
    generator = torch.Generator().manual_seed(1)
    flipped = 0
    for _ in range(8):
        out_maps, out_truth = augment(maps, truth, generator)
        assert torch.equal(out_maps[:, 5], out_truth)  # aligned after whatever flips were drawn
        assert torch.equal((out_maps[:, 3] > 0.5).float(), out_truth)  # temperature keeps the side of 0.5
        assert out_maps[:, 4].min() >= 0 and out_maps[:, 4].max() <= 1
        assert not torch.allclose(out_maps[:, :3], maps[:, :3])
        flipped += not torch.equal(out_truth, truth)
    assert 0 < flipped < 8


def test_demo_ships_its_corrector_and_the_cli_uses_it_when_asked(tmp_path, capsys):
    """`demo` bundles a corrector that beat the refined mask on its held-back slices; `evaluate --corrector
    bundled` scores it, and a model without one says so in one line."""
    import json

    from napari_imedsam.cli import main
    from napari_imedsam.model.corrector import bundled_corrector
    from napari_imedsam.model.registry import load_model

    from .conftest import phantom_folders

    loaded = load_model("demo")
    corrector = bundled_corrector("demo", loaded.weights_sha256)
    assert corrector is not None and corrector.header["helps"] is True
    assert corrector.header["metrics"]["dice"] > corrector.header["metrics_before"]["dice"]
    images, masks = phantom_folders(tmp_path, 3, seed=8)
    assert main(["evaluate", "--model", "demo", "--corrector", "bundled", "--images", str(images), "--masks",
                 str(masks), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert 0.0 <= summary["corrected_dice"] <= 1.0
    assert main(["evaluate", "--model", "tiny", "--corrector", "bundled", "--images", str(images), "--masks",
                 str(masks)]) == 2
    assert "no corrector is bundled with 'tiny'" in capsys.readouterr().err


def test_the_corrector_reads_its_region_normalised_with_the_whole_slice_window(fitted):
    """Only the box region is normalised, with the window resolved on the whole slice: the same pixels
    as normalising the slice and cropping (bit for bit), at the image's size and at another output size."""
    from skimage.transform import resize

    from napari_imedsam.inference.correction import corrector_region, region_maps
    from napari_imedsam.inference.windows import normalize_intensity

    loaded, _, _ = fitted
    image, mask = ellipse_phantoms(1, seed=4)[0]
    image = image.astype(np.float32) * 37.0 + 5.0  # not uint8: a percentile window over the slice
    corrector = DualFalseCorrector()
    for size in (None, (96, 80)):
        prediction = Predictor(loaded).predict(image, box_of_mask(mask), output_size=size)
        r0, r1, c0, c1 = region = corrector_region(corrector, prediction)
        whole = normalize_intensity(image)
        if size is not None:
            whole = resize(whole, (*size, 3), order=1, anti_aliasing=True)
        maps = region_maps(prediction, image, None, region)
        np.testing.assert_array_equal(maps[:3], np.moveaxis(whole[r0:r1, c0:c1], -1, 0).astype(np.float32))
        np.testing.assert_array_equal(maps[3], prediction.refined_prob[r0:r1, c0:c1])


def test_suggestions_come_with_a_box_s_result_and_not_after_clicks(fitted):
    """The session asks the corrector about a box's result; once the object has clicks it shows none."""
    from napari_imedsam.inference.session import AnnotationSession

    loaded, _, _ = fitted
    image, mask = ellipse_phantoms(1, seed=6)[0]
    session = AnnotationSession(Predictor(loaded), image, np.zeros(mask.shape, np.int32))
    corrector = DualFalseCorrector(CorrectorConfig(size=32, widths=(8, 16))).eval()
    with torch.no_grad():
        corrector.out.bias.fill_(10.0)  # flips every suspicious pixel: suggestions wherever the model doubts
    session.corrector = corrector
    box = box_of_mask(mask)
    boxed = session.predict(None, box, 1)
    assert boxed.remove is not None and (boxed.remove > 0).any()
    row, col = np.argwhere(mask)[len(np.argwhere(mask)) // 2]
    clicked = session.predict(None, box, 1, points=np.array([[float(col), float(row), 1.0]]))
    assert clicked.remove is None and clicked.add is None

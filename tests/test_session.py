"""AnnotationSession rules: user edits are never overwritten, the more confident object wins a pixel,
undo, accept, propagation that stops where the object ends, and the review queue."""

from __future__ import annotations

import numpy as np
import pytest

from napari_imedsam.inference.boxes import box_of_mask
from napari_imedsam.inference.predictor import Predictor
from napari_imedsam.inference.preprocess import InputError
from napari_imedsam.inference.propagation import propagate, propagate_both
from napari_imedsam.inference.results import ObjectResult
from napari_imedsam.inference.review import review_scores
from napari_imedsam.inference.session import AnnotationSession
from napari_imedsam.inference.windows import IntensityWindow, normalize_intensity, volume_window
from napari_imedsam.io.phantoms import phantom_volume


@pytest.fixture
def phantom_session(fitted):
    loaded, examples, _ = fitted
    image, mask = examples[0]
    labels = np.zeros(mask.shape, np.int32)
    return AnnotationSession(Predictor(loaded), image, labels), mask


def fake_result(label: int, prob: np.ndarray, slice_index=None) -> ObjectResult:
    """A result with a chosen refined probability over the whole slice (for exact rule tests)."""
    h, w = prob.shape
    zeros = np.zeros_like(prob, dtype=np.float32)
    return ObjectResult(slice_index, label, np.array([0.0, 0.0, w - 1.0, h - 1.0]), (0, h, 0, w), zeros, zeros,
                        prob.astype(np.float32), 0.01)


def test_box_result_is_written_under_its_label_and_matches_the_predictor(phantom_session, fitted):
    session, mask = phantom_session
    report = session.segment(None, box_of_mask(mask), label=3)
    direct = Predictor(fitted[0]).predict(session.image, box_of_mask(mask))
    np.testing.assert_array_equal(session.labels == 3, direct.refined_mask)
    assert set(np.unique(session.labels)) == {0, 3}
    assert report.written == report.predicted == direct.refined_mask.sum()
    assert session.results[(None, 3)].mean_uncertainty > 0
    x0, y0, x1, y1 = box_of_mask(mask)
    clicked = session.predict(None, box_of_mask(mask), 3, points=np.array([[x0 + 2.4, y0 + 3.6, 1.0], [x1, y1, 0.0]]))
    assert clicked.claimed_at == ((round(y0 + 3.6), round(x0 + 2.4)),)  # positive clicks only, (row, col)


def test_user_paint_and_erase_are_never_overwritten(phantom_session):
    session, mask = phantom_session
    rows, cols = np.nonzero(mask)
    r, c = rows[len(rows) // 2], cols[len(cols) // 2]
    session.labels[r - 2:r + 3, c - 2:c + 3] = 7  # the user painted object 7 inside the object
    session.record_user_edit((slice(r - 2, r + 3), slice(c - 2, c + 3)))
    report = session.segment(None, box_of_mask(mask), label=1)
    assert (session.labels[r - 2:r + 3, c - 2:c + 3] == 7).all()
    assert report.protected == 25 and report.written == (session.labels == 1).sum()
    er = np.nonzero(session.labels == 1)  # the user erases part of object 1: a new box does not bring it back
    erase = (er[0][:20], er[1][:20])
    session.labels[erase] = 0
    session.record_user_edit(erase)
    session.segment(None, box_of_mask(mask) + np.array([-2, -2, 2, 2]), label=1)
    assert (session.labels[erase] == 0).all()


def test_the_more_confident_object_wins_a_pixel_and_the_report_says_so():
    session = AnnotationSession(None, np.zeros((20, 20), np.float32), np.zeros((20, 20), np.int32))
    liver = np.zeros((20, 20), np.float32)
    liver[2:18, 2:18] = 0.8  # the first object's model claims a big square at p = 0.8
    session.apply(fake_result(1, liver))
    cava = np.zeros((20, 20), np.float32)
    cava[8:12, 8:12] = 0.95  # inside it, a second object sure of itself: takes its pixels
    cava[0:4, 4:8] = 0.6  # overlapping the first's corner with less confidence: the first keeps them
    report = session.apply(fake_result(2, cava))
    assert (session.labels[8:12, 8:12] == 2).all()
    assert report.taken_from == {1: 16} and report.kept_by == {1: 8}
    assert report.written == (session.labels == 2).sum() == 16 + 8  # 8 free pixels of the band at rows 0-1
    assert "16 px taken from object 1" in report.summary() and "kept by object 1" in report.summary()
    # object 2 re-prompted smaller: the pixels it gives up go back to object 1, which claims them
    smaller = np.zeros((20, 20), np.float32)
    smaller[9:11, 9:11] = 0.95
    session.apply(fake_result(2, smaller))
    assert (session.labels[8:12, 8:12] != 0).all() and (session.labels == 2).sum() == 4
    session.undo()
    assert (session.labels[8:12, 8:12] == 2).all()


def test_an_object_boxed_inside_another_wins_its_pixels_whichever_is_drawn_first():
    """A lesion boxed inside its organ: the organ's model is surer there (p 0.99 against 0.9), yet the
    lesion is what the user asked for inside its box. It used to get 0 px ("kept by object 1"). Drawn in
    either order, re-run, or undone, the lesion keeps its pixels and the organ the rest."""
    def boxed(label: int, prob: np.ndarray, box) -> ObjectResult:
        result = fake_result(label, prob)
        result.box_xyxy = np.asarray(box, float)
        return result

    organ = np.zeros((20, 20), np.float32)
    organ[2:18, 2:18] = 0.99
    lesion = np.zeros((20, 20), np.float32)
    lesion[8:12, 8:12] = 0.9
    for order in ((1, 2), (2, 1)):
        session = AnnotationSession(None, np.zeros((20, 20), np.float32), np.zeros((20, 20), np.int32))
        results = {1: boxed(1, organ, [1, 1, 18, 18]), 2: boxed(2, lesion, [7, 7, 12, 12])}
        for label in order:
            session.apply(results[label])
        assert (session.labels[8:12, 8:12] == 2).all(), order
        assert (session.labels == 1).sum() == 16 * 16 - 16
        session.apply(boxed(1, organ, [1, 1, 18, 18]))  # the organ again (a click, a nudged box): still not
        assert (session.labels[8:12, 8:12] == 2).all()
    session = AnnotationSession(None, np.zeros((20, 20), np.float32), np.zeros((20, 20), np.int32))
    session.apply(boxed(1, organ, [1, 1, 18, 18]))
    session.apply(boxed(2, lesion, [7, 7, 12, 12]))
    session.undo()  # the lesion's result taken back: its pixels go back to the organ, which claims them
    assert (session.labels[2:18, 2:18] == 1).all()
    # neighbours whose boxes overlap without nesting keep the confidence rule (the test above)


def test_a_positive_click_wins_the_contested_patch_it_lands_in():
    """The first object is surer of two patches the second also claims; the user clicks positive on one
    of them for the second object: that patch goes to it (the click is the user's word), the other stays."""
    session = AnnotationSession(None, np.zeros((20, 20), np.float32), np.zeros((20, 20), np.int32))
    first = np.zeros((20, 20), np.float32)
    first[2:18, 2:10] = 0.99
    session.apply(fake_result(1, first))
    second = np.zeros((20, 20), np.float32)
    second[4:8, 6:16] = 0.9  # overlaps the first on rows 4-7, columns 6-9
    second[12:16, 6:16] = 0.9  # and on rows 12-15, columns 6-9
    clicked = fake_result(2, second)
    clicked.claimed_at = ((5, 7),)  # a positive click in the upper contested patch
    report = session.apply(clicked)
    assert (session.labels[4:8, 6:10] == 2).all() and (session.labels[12:16, 6:10] == 1).all()
    assert report.taken_from == {1: 16} and report.kept_by == {1: 16}
    session.undo()
    assert (session.labels[4:8, 6:10] == 1).all()


def test_reprompt_replaces_model_pixels_and_undo_restores(phantom_session):
    session, mask = phantom_session
    before = session.labels.copy()
    box = box_of_mask(mask)
    session.segment(None, box, label=1)
    first = session.labels.copy()
    session.segment(None, np.array([box[0], box[1], (box[0] + box[2]) / 2, box[3]]), label=1)  # half box
    assert (session.labels == 1).sum() < (first == 1).sum()  # stale model pixels were retracted
    session.undo()
    np.testing.assert_array_equal(session.labels, first)
    session.undo()
    np.testing.assert_array_equal(session.labels, before)
    with pytest.raises(InputError, match="nothing to undo"):
        session.undo()


def test_accept_needs_labels(phantom_session):
    session, mask = phantom_session
    with pytest.raises(InputError, match="no labels to accept"):
        session.accept(None)
    session.segment(None, box_of_mask(mask), label=1)
    session.accept(None)
    assert session.accepted == {None}


def test_a_new_result_for_an_object_reports_the_pixels_it_changed():
    """A click that agrees with the mask changes nothing, and the status says so instead of only
    repeating the object's size."""
    session = AnnotationSession(None, np.zeros((20, 20), np.float32), np.zeros((20, 20), np.int32))
    square = np.zeros((20, 20), np.float32)
    square[5:15, 5:15] = 0.9
    first = session.apply(fake_result(1, square))
    assert first.changed is None and "changed" not in first.summary()
    again = session.apply(fake_result(1, square))
    assert again.changed == 0 and "(no pixel changed)" in again.summary()
    square[5:7, 5:15] = 0.1  # two rows fewer
    assert "(20 px changed)" in session.apply(fake_result(1, square)).summary()


def test_a_tight_box_around_a_uniform_object_has_contrast():
    from napari_imedsam.inference.windows import box_has_contrast

    image = np.zeros((40, 40), np.float32)
    image[10:30, 10:30] = 5.0  # a uniform object: its tight box holds one value, its surroundings another
    assert box_has_contrast(image, np.array([10.0, 10.0, 29.0, 29.0]))
    assert not box_has_contrast(np.full((40, 40), 5.0, np.float32), np.array([10.0, 10.0, 29.0, 29.0]))


def test_a_slice_left_without_labels_is_no_longer_accepted():
    """Undo (or the eraser) that empties an accepted slice takes it out of export and fine-tuning,
    instead of blocking them with "an accepted slice without labels"."""
    volume = np.zeros((3, 20, 20), np.float32)
    session = AnnotationSession(None, volume, np.zeros(volume.shape, np.int32), axis=0)
    square = np.zeros((20, 20), np.float32)
    square[5:15, 5:15] = 0.9
    session.apply(fake_result(1, square, slice_index=1))
    session.apply(fake_result(2, square, slice_index=2))
    session.accept(1)
    session.accept(2)
    session.undo()  # object 2's result on slice 2 goes: slice 2 has no labels left
    assert session.accepted == {1}
    session.labels[1] = 0  # the user erases slice 1 with the brush
    assert session.accepted_objects() == [] and session.accepted == set()


def test_a_volume_is_normalised_with_one_window_for_every_slice():
    volume, _ = phantom_volume()
    window = volume_window(volume, None)
    assert window.mode == "window"
    # a slice without the organ keeps the body at the same grey as a slice with it
    body = normalize_intensity(volume[1], window)[64, 10, 0]
    assert abs(body - normalize_intensity(volume[20], window)[64, 10, 0]) < 0.05
    assert volume_window(volume.astype(np.uint8), None) is None  # uint8 stays as it is
    assert volume_window(volume[0], IntensityWindow("window", 40, 400)).level == 40


@pytest.fixture(scope="module")
def demo_predictor():
    from napari_imedsam.model.registry import load_model

    return Predictor(load_model("demo"))


def phantom_propagation(predictor, window=None):
    volume, truth_labels = phantom_volume()
    truth = truth_labels > 0
    session = AnnotationSession(predictor, volume, np.zeros(volume.shape, np.int32), window=window)
    middle = 20
    session.segment(middle, box_of_mask(truth[middle]), label=1)
    session.begin_group()
    reasons = []
    for result in propagate_both(session, middle, 1, reasons):
        session.apply(result)
    session.end_group()
    return session, truth, reasons


def test_propagation_stops_where_the_object_ends(demo_predictor):
    session, truth, reasons = phantom_propagation(demo_predictor)
    predicted = session.labels == 1
    dice = 2 * (predicted & truth).sum() / (predicted.sum() + truth.sum())
    filled = np.nonzero(predicted.any(axis=(1, 2)))[0]
    present = np.nonzero(truth.any(axis=(1, 2)))[0]
    print(f"phantom volume Dice {dice:.3f}, slices {filled[0]}-{filled[-1]} (object {present[0]}-{present[-1]}), "
          f"stops: {reasons}")
    assert dice >= 0.85
    assert filled[0] >= present[0] - 1 and filled[-1] <= present[-1] + 1
    # the whole run is one undo step
    session.undo()
    assert set(np.nonzero((session.labels == 1).any(axis=(1, 2)))[0]) == {20}


def test_an_object_with_another_boxed_inside_it_propagates(demo_predictor):
    """The organ boxed inside the body holds its pixels on the start slice, so the body owns a ring there;
    propagation compared the next slice's whole body with that ring and stopped at once ("area grew 1.7x").
    The body's extent on the start slice (its mask, under the organ too) is the reference now."""
    from napari_imedsam.inference.propagation import PropagationRules

    volume, truth_labels = phantom_volume()
    session = AnnotationSession(demo_predictor, volume, np.zeros(volume.shape, np.int32))
    organ, body = truth_labels[20] > 0, volume[20] > -500
    session.segment(20, box_of_mask(organ), label=1)
    session.segment(20, box_of_mask(body), label=2)
    assert (session.labels[20][organ] == 1).mean() > 0.9  # the organ holds its pixels inside the body
    reasons = []
    # the organ holds ~30 % of the body here (the user's case: 38 %, over the 1.6x growth limit): a limit of
    # 1.3x makes this phantom show it
    for result in propagate_both(session, 20, 2, reasons, PropagationRules(max_growth=1.3)):
        session.apply(result)
    filled = np.nonzero((session.labels == 2).any(axis=(1, 2)))[0]
    assert filled[0] <= 5 and filled[-1] >= 35, (filled, reasons)
    assert not any("grew" in reason for reason in reasons), reasons


def test_propagated_slices_are_mirror_averaged_and_the_start_slice_is_as_drawn(demo_predictor, monkeypatch):
    from napari_imedsam.inference.propagation import PropagationRules

    asked = []
    original = Predictor.predict

    def spy(self, *args, **kwargs):
        asked.append(kwargs.get("mirror"))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Predictor, "predict", spy)
    session, truth, _ = phantom_propagation(demo_predictor)
    assert asked[0] is None and len(asked) > 3 and all(m is True for m in asked[1:])  # the box, then propagation
    assert PropagationRules().mirror and not demo_predictor.mirror


def test_review_queue_ranks_empty_and_wrong_slices_first():
    volume = np.full((7, 32, 32), 0.2, np.float32)
    volume[:, 10:20, 10:20] = 0.8  # a bright object on every slice
    labels = np.zeros(volume.shape, np.int32)
    labels[:, 10:20, 10:20] = 1
    labels[2] = 0
    labels[2, 0:10, 0:10] = 1  # slice 2: a mask where the object is not (dark background)
    labels[4] = 0  # slice 4: the object is missing (a gap)
    labels[5, 10:12, 10:12] = 1  # slice 5: collapsed
    labels[5, 12:20] = 0
    session = AnnotationSession(None, volume, labels, window=IntensityWindow("window", 0.5, 1.0))
    session.accepted.add(0)
    scores = review_scores(session)
    order = sorted(scores, key=lambda z: -scores[z].total)
    assert set(order[:3]) == {2, 4, 5}, {z: scores[z].total for z in order}
    assert 0 not in scores  # accepted slices are not offered again
    assert any("intensity" in r for r in scores[2].reasons) and any("gap" in r for r in scores[4].reasons)


def test_slice_and_dimension_errors():
    with pytest.raises(InputError, match="do not match"):
        AnnotationSession(None, np.zeros((4, 10, 10)), np.zeros((4, 10, 11), np.int32))
    session = AnnotationSession(None, np.zeros((4, 10, 10)), np.zeros((4, 10, 10), np.int32))
    with pytest.raises(InputError, match="outside the volume"):
        session.slice_image(4)
    with pytest.raises(InputError, match="no pixels on slice"):
        next(propagate(session, 1, 1, 1))
    with pytest.raises(InputError, match="no model loaded"):
        session.predict(1, [1, 1, 5, 5], 1)

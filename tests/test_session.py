"""AnnotationSession rules: never overwrite user edits or other objects, undo, accept, propagate, review."""

from __future__ import annotations

import numpy as np
import pytest

from napari_imedsam.inference.predictor import Predictor
from napari_imedsam.inference.preprocess import InputError
from napari_imedsam.inference.session import AnnotationSession
from src_train.points import box_of_mask


@pytest.fixture
def phantom_session(fitted):
    loaded, examples, _ = fitted
    image, mask = examples[0]
    labels = np.zeros(mask.shape, np.int32)
    return AnnotationSession(Predictor(loaded), image, labels), mask


def test_box_result_is_written_under_its_label_and_matches_the_predictor(phantom_session, fitted):
    session, mask = phantom_session
    result = session.segment(None, box_of_mask(mask), label=3)
    direct = Predictor(fitted[0]).predict(session.image, box_of_mask(mask))
    np.testing.assert_array_equal(session.labels == 3, direct.refined_mask)
    assert set(np.unique(session.labels)) == {0, 3}
    assert result.mean_uncertainty > 0


def test_user_paint_and_other_objects_are_never_overwritten(phantom_session):
    session, mask = phantom_session
    rows, cols = np.nonzero(mask)
    r, c = rows[len(rows) // 2], cols[len(cols) // 2]
    session.labels[r - 2:r + 3, c - 2:c + 3] = 7  # the user painted object 7 inside the object
    session.record_user_edit((slice(r - 2, r + 3), slice(c - 2, c + 3)))
    session.labels[0, 0] = 5  # another object elsewhere
    session.segment(None, box_of_mask(mask), label=1)
    assert (session.labels[r - 2:r + 3, c - 2:c + 3] == 7).all()
    assert session.labels[0, 0] == 5
    # the user erases part of object 1; a new box for object 1 does not bring it back
    er = np.nonzero(session.labels == 1)
    erase = (er[0][:20], er[1][:20])
    session.labels[erase] = 0
    session.record_user_edit(erase)
    session.segment(None, box_of_mask(mask) + np.array([-2, -2, 2, 2]), label=1)
    assert (session.labels[erase] == 0).all()


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


def tube_volume(depth: int = 9, size: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """A bright ellipse that shrinks towards both ends of the volume and vanishes at the ends."""
    rng = np.random.default_rng(5)
    volume = rng.normal(0.3, 0.05, (depth, size, size)).astype(np.float32)
    truth = np.zeros(volume.shape, bool)
    yy, xx = np.mgrid[:size, :size]
    for z in range(1, depth - 1):
        radius = 22 - 3 * abs(z - depth // 2)
        truth[z] = ((yy - 64) / radius) ** 2 + ((xx - 60) / (radius * 1.3)) ** 2 <= 1
    volume[truth] += 0.4
    return volume, truth


def test_propagation_fills_neighbours_and_stops_where_the_object_ends(fitted):
    volume, truth = tube_volume()
    labels = np.zeros(volume.shape, np.int32)
    session = AnnotationSession(Predictor(fitted[0]), volume, labels)
    middle = volume.shape[0] // 2
    session.segment(middle, box_of_mask(truth[middle]), label=2)
    for direction in (1, -1):
        for result in session.propagate(middle, 2, direction):
            session.apply(result)
    filled = [z for z in range(volume.shape[0]) if (labels[z] == 2).any()]
    assert filled[0] >= 1 and filled[-1] <= volume.shape[0] - 2  # stopped where the object vanished
    assert len(filled) >= 5
    for z in filled:
        overlap = 2 * ((labels[z] == 2) & truth[z]).sum() / ((labels[z] == 2).sum() + truth[z].sum())
        assert overlap > 0.8, z
    assert session.next_uncertain_slice(middle) in filled
    session.accept(session.next_uncertain_slice(middle))
    assert len(session.accepted) == 1


def test_slice_and_dimension_errors():
    predictor = Predictor.__new__(Predictor)  # rules below are checked before any model call
    with pytest.raises(InputError, match="do not match"):
        AnnotationSession(predictor, np.zeros((4, 10, 10)), np.zeros((4, 10, 11), np.int32))
    session = AnnotationSession(predictor, np.zeros((4, 10, 10)), np.zeros((4, 10, 10), np.int32))
    with pytest.raises(InputError, match="outside the volume"):
        session.slice_image(4)
    with pytest.raises(InputError, match="no result for object"):
        next(session.propagate(1, 1, 1))

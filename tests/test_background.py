"""Background embedding of every slice (outward from the displayed one, yielding to boxes) and crop
reuse for zoom models."""

from __future__ import annotations

import numpy as np

from napari_imedsam.inference.background import BackgroundEmbedder, outward
from napari_imedsam.inference.boxes import zoom_region
from napari_imedsam.inference.crops import CropMemory
from napari_imedsam.inference.predictor import Predictor
from napari_imedsam.inference.session import AnnotationSession
from napari_imedsam.io.phantoms import phantom_volume

from .conftest import untrained


def volume_session(depth: int = 6, zoom: bool = False) -> AnnotationSession:
    volume, _ = phantom_volume((depth, 48, 48))
    return AnnotationSession(Predictor(untrained(), zoom=zoom), volume, np.zeros(volume.shape, np.int32))


def test_outward_order():
    assert outward(2, 6) == [2, 3, 1, 4, 0, 5]
    assert outward(0, 3) == [0, 1, 2] and outward(9, 3) == [2, 1, 0]


def test_every_slice_is_embedded_outward_and_the_order_restarts_where_the_user_scrolls():
    session = volume_session()
    embedder = BackgroundEmbedder(session, center=2)
    run = embedder.run()
    assert [next(run), next(run)] == [2, 3]
    embedder.center = 5  # the user scrolled
    assert list(run) == [5, 4, 1, 0]
    assert len(session.predictor.cache) == 6 and embedder.pending() == []
    session.window = None  # another window: every slice is due again
    assert len(embedder.pending()) == 6


def test_background_work_waits_while_a_box_needs_the_cpu_and_stops_on_request():
    session = volume_session(3)
    calls = []

    def busy() -> bool:
        calls.append(len(session.predictor.cache))
        return len(calls) <= 3  # a box is running for the first three checks

    embedder = BackgroundEmbedder(session, center=0, busy=busy)
    run = embedder.run()
    assert next(run) == 0
    assert calls == [0, 0, 0, 0]  # nothing was embedded while busy
    embedder.stop()
    assert list(run) == [] and len(session.predictor.cache) == 1


def test_zoom_models_are_not_embedded_in_the_background():
    assert list(BackgroundEmbedder(volume_session(zoom=True)).run()) == []


def test_a_nudged_box_reuses_the_encoded_crop_and_a_new_object_gets_its_own():
    crops = CropMemory(margin=0.25, tolerance=0.1)
    where, shape = ("digest", None, ()), (200, 200)
    box = np.array([50.0, 60.0, 110.0, 120.0])
    first = crops.choose(where, box, shape)
    assert first == zoom_region(box, shape, 0.25)  # exactly the crop the model was trained on
    assert crops.choose(where, box + 3, shape) == first  # nudged: reused
    assert crops.choose(where, box + [0, 0, 4, -2], shape) == first
    far = np.array([120.0, 130.0, 180.0, 190.0])
    assert crops.choose(where, far, shape) == zoom_region(far, shape, 0.25)  # another object
    assert crops.choose(where, box + 30, shape) == zoom_region(box + 30, shape, 0.25)  # moved too far
    assert crops.choose(("other image", None, ()), box, shape) == first  # same region, own memory
    assert (crops.reused, crops.encoded) == (2, 4) and crops.reuse_rate == 2 / 6
    assert CropMemory(0.25, 0.0).choose(where, box + 3, shape) == zoom_region(box + 3, shape, 0.25)


def test_zoom_predictor_reuses_the_crop_embedding_for_a_nudged_box():
    image = np.random.default_rng(0).normal(size=(80, 90)).astype(np.float32)
    predictor = Predictor(untrained(), zoom=True, crop_tolerance=0.1)
    predictor.predict(image, (20, 20, 60, 60))
    predictor.predict(image, (22, 21, 62, 60))
    assert (predictor.cache.misses, predictor.cache.hits) == (1, 1) and predictor.crops.reuse_rate == 0.5
    exact = Predictor(untrained(), zoom=True)  # tolerance 0: every box gets its own crop (as trained)
    exact.predict(image, (20, 20, 60, 60))
    exact.predict(image, (22, 21, 62, 60))
    assert exact.cache.misses == 2

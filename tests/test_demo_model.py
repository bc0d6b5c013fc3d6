"""The bundled demo model: the default, small, self-describing, and it really segments."""

from __future__ import annotations

import numpy as np

from napari_imedsam._sample_data import CT_SAMPLES, load_ct_slice
from napari_imedsam.baselines import box_mask
from napari_imedsam.evaluation import dice
from napari_imedsam.inference.predictor import Predictor
from napari_imedsam.inference.preprocess import box_of_mask
from napari_imedsam.model.registry import PACKAGE_DIR, REGISTRY, default_model, load_model
from napari_imedsam.model.weights import read_safetensors


def test_bundled_model_is_the_default_and_records_its_recipe():
    path = PACKAGE_DIR / "weights" / REGISTRY["demo"].filename
    assert default_model() == "demo" and path.stat().st_size < 20e6
    _, header = read_safetensors(path)
    assert header["inference"]["zoom"] is True and "demo_recipe" in header["recipe"]
    assert "research and education only" in header["data"] and len(header["data_manifest_sha256"]) == 64


def test_bundled_model_segments_the_liver_of_the_ct_sample():
    image, labels, names = load_ct_slice(CT_SAMPLES["ct_abdomen"])
    liver = labels == names.index("liver_000") + 1
    result = Predictor(load_model("demo")).predict(image, box_of_mask(liver))
    assert dice(result.refined_mask, liver) > 0.85


def test_bundled_model_beats_the_box_on_every_bundled_ct_structure_on_average():
    predictor = Predictor(load_model("demo"))
    model_dice, box_dice = [], []
    for stem in CT_SAMPLES.values():
        image, labels, names = load_ct_slice(stem)
        for value in range(1, len(names) + 1):
            truth = labels == value
            if truth.sum() < 50:
                continue
            box = box_of_mask(truth)
            model_dice.append(dice(predictor.predict(image, box).refined_mask, truth))
            box_dice.append(dice(box_mask(truth.shape, box), truth))
    assert len(model_dice) >= 20
    assert np.mean(model_dice) > 0.8 and np.mean(model_dice) > np.mean(box_dice) + 0.05

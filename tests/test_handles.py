"""Model handles never change: other adapters make a new handle over the same frozen tensors."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from napari_imedsam.inference.embedding_store import EmbeddingStore
from napari_imedsam.inference.predictor import Predictor
from napari_imedsam.io.phantoms import ellipse_phantoms
from napari_imedsam.model.registry import LoadedModel
from napari_imedsam.model.weights import CheckpointError, copy_network, save_adapters, trainable_state

from .conftest import untrained


def trained_adapters(loaded: LoadedModel, seed: int = 3) -> dict[str, torch.Tensor]:
    """Every trainable tensor of `loaded`, moved away from its value (as training would)."""
    generator = torch.Generator().manual_seed(seed)
    return {k: v + 0.05 * torch.randn(v.shape, generator=generator) for k, v in trainable_state(loaded.network).items()}


def adapter_file(loaded: LoadedModel, tensors: dict[str, torch.Tensor], path, **header):
    network = copy_network(loaded.network)
    network.load_state_dict(tensors, strict=False)
    return save_adapters(network, path, {"base_model": loaded.model_id, "base_sha256": loaded.weights_sha256,
                                         **header})


def frozen_keys(loaded: LoadedModel) -> list[str]:
    trainable = set(trainable_state(loaded.network))
    return [k for k in loaded.network.state_dict() if k not in trainable]


def test_with_adapters_shares_the_frozen_tensors_and_leaves_the_original_as_it_was(tmp_path):
    base = untrained()
    image, mask = ellipse_phantoms(1, seed=2)[0]
    box = np.argwhere(mask)
    box = np.array([box[:, 1].min(), box[:, 0].min(), box[:, 1].max(), box[:, 0].max()], float)
    state = {k: v.clone() for k, v in base.network.state_dict().items()}
    before = Predictor(base).predict(image, box)
    tensors = trained_adapters(base)
    path = adapter_file(base, tensors, tmp_path / "v001.safetensors")

    tuned = base.with_adapters(path)

    assert tuned is not base and tuned.network is not base.network
    assert tuned.adapter_version == str(path) and base.adapter_version == "base"
    tuned_state, base_state = tuned.network.state_dict(), base.network.state_dict()
    for key, value in tensors.items():  # the file's adapters, in tensors of the new handle's own
        assert torch.equal(tuned_state[key], value), key
        assert tuned_state[key].data_ptr() != base_state[key].data_ptr(), key
    assert all(tuned_state[k].data_ptr() == base_state[k].data_ptr() for k in frozen_keys(base))  # no copy
    for key, value in base_state.items():  # the original: bit for bit as before, and so are its predictions
        assert torch.equal(value, state[key]), key
    again = Predictor(base).predict(image, box)
    np.testing.assert_array_equal(again.refined_prob, before.refined_prob)
    np.testing.assert_array_equal(again.uncertainty, before.uncertainty)
    assert not np.array_equal(Predictor(tuned).predict(image, box).refined_prob, before.refined_prob)


def test_a_handle_cannot_be_changed_and_each_version_has_its_own_cache_token(tmp_path):
    base = untrained()
    with pytest.raises(dataclasses.FrozenInstanceError):
        base.adapter_version = "v001"  # type: ignore[misc]
    tuned = base.with_adapters(trained_adapters(base), "liver/v001")
    assert tuned.cache_token == (base.model_id, base.weights_sha256, "liver/v001")
    assert tuned.cache_token != base.cache_token
    image = ellipse_phantoms(1, seed=0)[0][0]
    shared = EmbeddingStore()  # one cache, as the dock keeps when switching versions: two entries, never mixed
    first = Predictor(base, cache=shared).embed(image)
    second = Predictor(tuned, cache=shared).embed(image)
    assert first.key != second.key and shared.get(first.key) is not None and shared.get(second.key) is not None
    assert base.with_adapters(trained_adapters(base), "liver/v001").cache_token == tuned.cache_token


def test_with_adapters_from_memory_and_from_files_is_checked(tmp_path):
    base = untrained()
    tensors = trained_adapters(base)
    with pytest.raises(ValueError, match="version id"):
        base.with_adapters(tensors)
    with pytest.raises(CheckpointError, match="do not match"):
        base.with_adapters({k: v for k, v in list(tensors.items())[1:]}, "partial")
    other = adapter_file(base, tensors, tmp_path / "other.safetensors")
    with pytest.raises(CheckpointError, match="trained on base"):
        dataclasses.replace(base, weights_sha256="f" * 64).with_adapters(other)
    zoomed = base.with_adapters(adapter_file(base, tensors, tmp_path / "zoom.safetensors",
                                             inference={"zoom": True, "zoom_margin": 0.5}))
    assert (zoomed.zoom, zoomed.zoom_margin) == (True, 0.5) and (base.zoom, base.zoom_margin) == (False, 0.25)
    chained = zoomed.with_adapters(tensors, "again")  # from a handle with adapters: still the base's frozen tensors
    assert all(chained.network.state_dict()[k].data_ptr() == base.network.state_dict()[k].data_ptr()
               for k in frozen_keys(base))


def test_load_model_with_adapters_is_the_base_with_adapters(tmp_path):
    base = untrained()
    tensors = trained_adapters(base)
    path = adapter_file(base, tensors, tmp_path / "v001.safetensors")
    loaded = untrained("tiny", adapters=path)
    assert loaded.adapter_version == str(path)
    assert not any(p.requires_grad for p in loaded.network.parameters()) and not loaded.network.training
    for key, value in tensors.items():
        assert torch.equal(loaded.network.state_dict()[key], value), key

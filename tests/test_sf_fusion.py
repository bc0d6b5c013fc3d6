"""SF-RecSAM's spatial-frequency fusion adapter: an identity when new, trainable, saved with the
adapters and rebuilt from the adapter file on a base that lacks it."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from napari_imedsam.errors import InputError
from napari_imedsam.model.checks import ConfigError, check_config
from napari_imedsam.model.config import TINY
from napari_imedsam.model.frequency import SpatialFrequencyFusion
from napari_imedsam.model.imedsam import build_model
from napari_imedsam.model.registry import load_model
from napari_imedsam.model.weights import save_adapters, trainable_state


def test_a_new_fusion_adapter_leaves_the_encoder_output_unchanged():
    torch.manual_seed(0)
    network = build_model(TINY).eval()
    images = torch.rand(2, 3, 256, 256) * 255
    with torch.no_grad():
        before = network.encode(images)
        network.add_sf_fusion(8)
        after = network.encode(images)
    assert network.config.encoder.sf_fusion and len(network.image_encoder.sf_adapters) == TINY.encoder.depth
    assert torch.equal(before, after)
    names = [name for name, _ in network.parameter_groups()["frequency_adapter"]]
    assert any("sf_adapters.0.spectral_filter" in n for n in names)  # trained with the other adapters


def test_the_filter_acts_on_the_spectrum_and_fits_another_token_grid():
    torch.manual_seed(0)
    fusion = SpatialFrequencyFusion(dim=12, hidden=4, grid=8)
    with torch.no_grad():
        fusion.scale.fill_(1.0)
        tokens = torch.randn(1, 8, 8, 12)
        passing = fusion(tokens)
        fusion.spectral_filter[..., 0].zero_()  # block every frequency: only the spatial branch is left
        blocked = fusion(tokens)
        assert not torch.allclose(passing, blocked)
        bigger = fusion(torch.randn(2, 12, 12, 12))  # another input size: the filter is resized
    assert bigger.shape == (2, 12, 12, 12) and torch.isfinite(bigger).all()


def test_fusion_needs_a_vit_backbone():
    lite = replace(TINY, encoder=replace(TINY.encoder, backbone="lite", sf_fusion=True))
    with pytest.raises(ConfigError, match="sf_fusion"):
        check_config(lite)


def test_trained_fusion_adapters_travel_in_the_adapter_file(tmp_path):
    from napari_imedsam.io.export import export_slices
    from src_train.data import load_dataset
    from src_train.trainer import TrainOptions, train

    from .test_training import phantom_slices

    export_slices(tmp_path / "data", phantom_slices(4))
    demo_samples = load_dataset(tmp_path / "data")
    base = load_model("demo")
    with pytest.raises(InputError, match="adapters"):
        train(base, demo_samples, TrainOptions(mode="decoder", add_sf_fusion=True), tmp_path / "out")
    options = TrainOptions(mode="adapters", add_sf_fusion=True, steps=3, validate_every=3, batch_size=2,
                           n_points=64, val_fraction=0.34, keep_start=False, lr_adapters=1e-2)
    report = train(base, demo_samples, options, tmp_path / "out", name="sf")
    trained = report.model.network
    assert trained.config.encoder.sf_fusion and not base.network.config.encoder.sf_fusion  # base untouched
    scales = [float(a.scale) for a in trained.image_encoder.sf_adapters]
    assert any(s != 0.0 for s in scales)  # the fusion adapters trained
    again = base.with_adapters(report.version_path)  # a base without fusion: the file brings the modules
    assert again.network.config.encoder.sf_fusion
    image = torch.rand(1, 3, 256, 256) * 255
    with torch.no_grad():
        assert torch.allclose(again.network.encode(image), trained.encode(image), atol=1e-5)
    assert set(trainable_state(again.network)) == set(trainable_state(trained))


def test_an_adapter_file_with_a_bad_fusion_width_is_refused(tmp_path):
    from napari_imedsam.errors import CheckpointError

    base = load_model("demo")
    network = build_model(base.network.config)
    network.load_state_dict(base.network.state_dict())
    network.add_sf_fusion(4)
    path = save_adapters(network, tmp_path / "a.safetensors",
                         {"base_model": "demo", "base_sha256": base.weights_sha256})
    from napari_imedsam.model.weights import atomic_save_safetensors, read_safetensors

    tensors, header = read_safetensors(path)
    header["config"]["encoder"]["sf_hidden"] = "wide"
    atomic_save_safetensors(tensors, path, header)
    with pytest.raises(CheckpointError, match="sf_hidden"):
        base.with_adapters(path)


@pytest.mark.parametrize("args, message", [
    (["--mode", "decoder", "--sf-fusion"], "--sf-fusion adds encoder adapters"),
    (["--mode", "adapters", "--lr-adapters", "-1"], "lr_adapters must be a positive number"),
])
def test_train_cli_refuses_fusion_outside_adapter_modes_and_bad_rates(tmp_path, capsys, args, message):
    from napari_imedsam.cli import main

    code = main(["train", "--model", "demo", "--data", str(tmp_path), "--out", str(tmp_path / "out"), *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], err
    assert not (tmp_path / "out").exists()  # refused before anything was loaded or written

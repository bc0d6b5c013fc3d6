"""Shared fixtures: tiny models, a SAM-layout checkpoint, a briefly fitted model on synthetic shapes."""

from __future__ import annotations

import warnings
from functools import partial

import pytest
import torch
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

from napari_imedsam.inference.predictor import Predictor
from napari_imedsam.io.phantoms import ellipse_phantoms
from napari_imedsam.model.config import TINY, ModelConfig
from napari_imedsam.model.registry import LoadedModel, load_model
from src_train.fit import EncodedExample, fit_decoder

from .fault_fixtures import full_disk, png_image, readonly_dir, small_export, tiny_model_file  # noqa: F401


def phantom_folders(root, count: int, seed: int):
    """`count` ellipse phantoms as PNGs in ROOT/images and ROOT/masks (a folder `imedsam train` and
    `evaluate` read); returns (images, masks)."""
    import numpy as np
    from PIL import Image

    images, masks = root / "images", root / "masks"
    images.mkdir()
    masks.mkdir()
    for i, (image, mask) in enumerate(ellipse_phantoms(count, seed=seed)):
        Image.fromarray((image.clip(0, 1) * 255).astype(np.uint8)).save(images / f"p{i}.png")
        Image.fromarray(mask.astype(np.uint8) * 255).save(masks / f"p{i}.png")
    return images, masks


def untrained(name: str = "tiny", **kwargs) -> LoadedModel:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_model(name, **kwargs)


def official_sam(config: ModelConfig = TINY, seed: int = 0) -> Sam:
    """segment-anything's own `Sam` for a config, with random non-zero weights everywhere."""
    torch.manual_seed(seed)
    enc, dec = config.encoder, config.decoder
    sam = Sam(
        image_encoder=ImageEncoderViT(
            img_size=enc.img_size, patch_size=enc.patch_size, embed_dim=enc.embed_dim, depth=enc.depth,
            num_heads=enc.num_heads, mlp_ratio=enc.mlp_ratio, out_chans=enc.out_chans, qkv_bias=True,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), use_abs_pos=True, use_rel_pos=True,
            window_size=enc.window_size, global_attn_indexes=enc.global_attn_indexes,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=enc.out_chans, image_embedding_size=(enc.grid_size, enc.grid_size),
            input_image_size=(enc.img_size, enc.img_size), mask_in_chans=16,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=dec.transformer_depth, embedding_dim=enc.out_chans,
                                          mlp_dim=dec.transformer_mlp_dim, num_heads=dec.transformer_heads),
            transformer_dim=enc.out_chans, iou_head_depth=3, iou_head_hidden_dim=enc.out_chans,
        ),
    )
    with torch.no_grad():  # SAM zero-initialises pos/rel-pos tables; make every tensor informative
        for name, param in sam.named_parameters():
            if "pos" in name:
                param.normal_(0.0, 0.02)
    return sam.eval()


@pytest.fixture
def sam_checkpoint(tmp_path):
    """A tiny-config checkpoint saved exactly as the official SAM .pth files are (a plain state dict)."""
    sam = official_sam()
    path = tmp_path / "sam_tiny.pth"
    torch.save(sam.state_dict(), path)
    return path, sam


@pytest.fixture(scope="session")
def fitted():
    """The tiny model after a short decoder-mode fit on synthetic ellipses (~10 s on 2 CPU cores)."""
    torch.manual_seed(0)
    loaded = untrained()
    predictor = Predictor(loaded)
    examples = ellipse_phantoms(6)
    encoded = [EncodedExample(predictor.embed(image), mask) for image, mask in examples]
    losses = fit_decoder(loaded.network, encoded, steps=300, seed=0)
    return loaded, examples, losses


def pytest_collection_modifyitems(config, items):
    """GUI tests need a display (Xvfb in CI, via xvfb-run); skip them clearly without one."""
    import os

    if os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"):
        return
    skip = pytest.mark.skip(reason="no display: run under xvfb-run (make test does)")
    for item in items:
        if "gui" in item.keywords:
            item.add_marker(skip)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Fault suite: note how each case ended (see tests/faults.py)."""
    from .faults import record

    outcome = yield
    report = outcome.get_result()
    report._fault_excinfo = call.excinfo
    record(item, report)


def pytest_terminal_summary(terminalreporter):
    from .faults import summary

    summary(terminalreporter)

"""Checks on model files before anything is built: header types, config bounds, tensors vs config.

A crafted header (`patch_size: 0`, `embed_dim: 196608`, `"inference": 5`) must give one clear
`CheckpointError`, never a ZeroDivisionError or an attempt to allocate hundreds of GB. Configs
are checked field by field against sane bounds, then the network is built on PyTorch's `meta`
device (shapes only, no memory) and compared with the tensors actually in the file.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any

import torch

from .config import UNCERTAINTY_KINDS, DecoderConfig, EncoderConfig, ModelConfig

MAX_PARAMETERS = 2_000_000_000  # ~8 GB in float32: far above ViT-H (0.64 B), far below a crafted header
# Inclusive bounds; fields not listed are only type-checked.
BOUNDS: dict[str, tuple[float, float]] = {
    "img_size": (16, 4096), "patch_size": (1, 64), "embed_dim": (8, 4096), "depth": (1, 64),
    "num_heads": (1, 64), "mlp_ratio": (0.25, 16.0), "window_size": (0, 256), "out_chans": (8, 4096),
    "lora_rank": (0, 256), "fa_hidden": (1, 4096), "sf_hidden": (1, 4096),
    "transformer_depth": (1, 16), "transformer_mlp_dim": (1, 16384), "transformer_heads": (1, 64),
    "pe_frequencies": (0, 32), "coarse_feature_dim": (1, 8192), "dropout": (0.0, 0.95), "mc_passes": (1, 256),
    "refine_fraction": (0.0, 1.0), "refine_min_uncertainty": (0.0, 1.0), "fine_image_patch": (0, 15),
}
LAYER_BOUNDS = (1, 8, 1, 16384)  # hidden-layer tuples: count and width
SPECTRA = ("amplitude", "phase", "none")


class ConfigError(ValueError):
    """A model config that cannot describe a usable network."""


def _typed(section: str, spec: dataclasses.Field, value: Any) -> Any:
    where = f"{section}.{spec.name}"
    default = spec.default if spec.default is not dataclasses.MISSING else None
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    elif isinstance(default, str):
        ok = isinstance(value, str)
    elif isinstance(default, tuple):
        ok = isinstance(value, (list, tuple)) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        value = tuple(value) if ok else value
    else:
        ok = True
    if not ok:
        raise ConfigError(f"{where} = {value!r} has the wrong type")
    if spec.name in BOUNDS:
        low, high = BOUNDS[spec.name]
        if not low <= value <= high:
            raise ConfigError(f"{where} = {value!r} is outside the sane range {low}..{high}")
    return value


def _section(name: str, cls: type, data: Any) -> Any:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{name} must be an object, found {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{name} has unknown fields {unknown[:5]}")
    values = {key: _typed(name, fields[key], value) for key, value in data.items()}
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{name}: {exc}") from None


def config_from_header(data: Any) -> ModelConfig:
    """A `ModelConfig` from a header's `config` object, checked; raises `ConfigError` saying what is wrong."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"config must be an object, found {type(data).__name__}")
    if not isinstance(data.get("name"), str) or not data["name"]:
        raise ConfigError("config has no name")
    _section("encoder", EncoderConfig, data.get("encoder"))
    _section("decoder", DecoderConfig, data.get("decoder"))
    try:  # the project's own constructor, once every field has passed
        config = ModelConfig.from_dict(dict(data))
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"config: {exc}") from None
    check_config(config)
    return config


def check_config(config: ModelConfig) -> None:
    """Relations between fields that the per-field bounds do not cover."""
    enc, dec = config.encoder, config.decoder
    problems = []
    if enc.img_size % enc.patch_size:
        problems.append(f"encoder.img_size {enc.img_size} is not a multiple of patch_size {enc.patch_size}")
    if enc.embed_dim % enc.num_heads:
        problems.append(f"encoder.embed_dim {enc.embed_dim} is not divisible by num_heads {enc.num_heads}")
    if enc.out_chans % 8 or enc.out_chans % dec.transformer_heads:
        problems.append(f"encoder.out_chans {enc.out_chans} must be divisible by 8 and by transformer_heads "
                        f"{dec.transformer_heads}")
    if any(not 0 <= i < enc.depth for i in enc.global_attn_indexes):
        problems.append(f"encoder.global_attn_indexes {list(enc.global_attn_indexes)} must lie in 0..{enc.depth - 1}")
    if enc.fa_spectrum not in SPECTRA:
        problems.append(f"encoder.fa_spectrum must be one of {SPECTRA}, got {enc.fa_spectrum!r}")
    if enc.sf_fusion and enc.backbone != "vit":
        problems.append(f"encoder.sf_fusion (SF-RecSAM's fusion adapter) needs a ViT backbone, not {enc.backbone!r}")
    if dec.fine_image_patch % 2 == 0 and dec.fine_image_patch:
        problems.append(f"decoder.fine_image_patch {dec.fine_image_patch} must be odd (a patch centred on its "
                        "point; 0: Dec_f does not read the image)")
    if dec.uncertainty not in UNCERTAINTY_KINDS:
        problems.append(f"decoder.uncertainty must be one of {UNCERTAINTY_KINDS}")
    for name in ("coarse_hidden", "fine_hidden"):
        layers = getattr(dec, name)
        if not LAYER_BOUNDS[0] <= len(layers) <= LAYER_BOUNDS[1] or any(
                not LAYER_BOUNDS[2] <= w <= LAYER_BOUNDS[3] for w in layers):
            problems.append(f"decoder.{name} {list(layers)} must be 1..8 layers of 1..16384 units")
    if problems:
        raise ConfigError("; ".join(problems))


def expected_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every state-dict tensor shape of the network `config` describes, without allocating it."""
    from .imedsam import build_model

    with torch.device("meta"):
        network = build_model(config)
    count = sum(p.numel() for p in network.parameters())
    if count > MAX_PARAMETERS:
        raise ConfigError(f"the config describes {count / 1e9:.1f} billion parameters (limit "
                          f"{MAX_PARAMETERS / 1e9:.0f} billion)")
    return shapes_of(network.state_dict())


def tensor_mismatch(expected: Mapping[str, tuple[int, ...]], found: Mapping[str, tuple[int, ...]],
                    optional: Callable[[str], bool] = lambda key: False) -> str:
    """How the tensors `found` differ from those `expected` (name -> shape), as one clause: missing ones
    (but `optional`), unexpected ones, wrong shapes; "" when they match."""
    missing = [k for k in expected if k not in found and not optional(k)]
    unexpected = [k for k in found if k not in expected]
    wrong = [f"{k} {tuple(found[k])} (expected {tuple(expected[k])})" for k in expected
             if k in found and tuple(found[k]) != tuple(expected[k])]
    problems = []
    if missing:
        problems.append(f"{len(missing)} tensors missing, e.g. {missing[:3]}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected tensors, e.g. {unexpected[:3]}")
    if wrong:
        problems.append(f"{len(wrong)} tensors of the wrong shape, e.g. {wrong[:2]}")
    return "; ".join(problems)


def shapes_of(tensors: Mapping[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {key: tuple(value.shape) for key, value in tensors.items()}


def check_tensors(config: ModelConfig, shapes: Mapping[str, tuple[int, ...]]) -> None:
    """A whole-model file holds exactly the tensors its config describes, with the same shapes."""
    problems = tensor_mismatch(expected_shapes(config), shapes)
    if problems:
        raise ConfigError(f"the tensors do not match the header's config: {problems}")


def check_inference(header: Mapping[str, Any]) -> dict[str, Any]:
    """The header's optional `inference` settings ({zoom: bool, zoom_margin: 0..2, prompt_clicks: bool}),
    checked."""
    inference = header.get("inference")
    if inference is None:
        return {}
    if not isinstance(inference, Mapping):
        raise ConfigError(f"'inference' must be an object, found {type(inference).__name__}")
    zoom, margin = inference.get("zoom", False), inference.get("zoom_margin", 0.25)
    if not isinstance(zoom, bool):
        raise ConfigError(f"inference.zoom must be true or false, got {zoom!r}")
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not 0.0 <= margin <= 2.0:
        raise ConfigError(f"inference.zoom_margin must be a number in 0..2, got {margin!r}")
    prompt_clicks = inference.get("prompt_clicks", False)
    if not isinstance(prompt_clicks, bool):
        raise ConfigError(f"inference.prompt_clicks must be true or false, got {prompt_clicks!r}")
    return {"zoom": zoom, "zoom_margin": float(margin), "prompt_clicks": prompt_clicks}

"""Checkpoint I/O: SAM-layout state dicts (torch, weights_only) and safetensors with a JSON header."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import pickle
import re
from collections.abc import Iterable, Mapping
from itertools import chain
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open
from safetensors.torch import save as serialize_safetensors
from torch.nn import functional as F

from .._atomic import atomic_write
from ..errors import CheckpointError  # noqa: F401 - raised here, re-exported
from .checks import ConfigError, check_inference, check_tensors, config_from_header, shapes_of, tensor_mismatch
from .config import CONFIGS, ModelConfig
from .imedsam import IMedSAM

HEADER_KEY = "imedsam"
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def sha256_of(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _one_line(exc: BaseException) -> str:
    """An exception as one line without terminal colour codes: `Type: first line of the message`."""
    lines = [line.strip() for line in ANSI_ESCAPE.sub("", str(exc)).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0] if lines else ''}".rstrip(": ")


# ---- SAM-layout checkpoints (.pth) ------------------------------------------------------------
def read_sam_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load an official SAM/MedSAM checkpoint safely (`weights_only=True`)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    if path.is_dir():
        raise CheckpointError(f"{path}: is a directory, not a checkpoint file")
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        message = ANSI_ESCAPE.sub("", str(exc))
        found = re.search(r"GLOBAL ([\w.]+)", message)  # weights_only refused code or foreign objects
        if found:
            raise CheckpointError(f"{path}: refused: the file holds pickled objects other than tensors "
                                  f"({found.group(1)}); only plain state dicts are loaded "
                                  "(torch.load with weights_only=True)") from None
        reason = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", message)
        detail = f"UnpicklingError: {reason.group(1).strip()}" if reason else _one_line(exc)
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({detail})") from None
    except Exception as exc:  # torch raises many types for truncated/garbage files
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({_one_line(exc)})") from None
    if isinstance(state, Mapping) and "model" in state and isinstance(state["model"], Mapping):
        state = state["model"]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: expected a state dict of tensors, found {type(state).__name__}")
    return dict(state)


def infer_config(state: Mapping[str, torch.Tensor], source: str = "checkpoint") -> ModelConfig:
    """Which known architecture a SAM-layout state dict belongs to (by encoder width and depth)."""
    patch = state.get("image_encoder.patch_embed.proj.weight")
    if patch is None:
        raise CheckpointError(f"{source}: no image_encoder.patch_embed.proj.weight; not a SAM checkpoint")
    if patch.ndim != 4:
        raise CheckpointError(f"{source}: image_encoder.patch_embed.proj.weight has shape {tuple(patch.shape)}, "
                              "not (embed_dim, 3, patch, patch); not a SAM checkpoint")
    embed_dim = patch.shape[0]
    blocks = {k.split(".")[2] for k in state if k.startswith("image_encoder.blocks.")}
    if not blocks or not all(b.isdigit() for b in blocks):
        raise CheckpointError(f"{source}: no numbered image_encoder.blocks.N tensors; not a SAM checkpoint")
    depth = 1 + max(int(b) for b in blocks)
    for config in CONFIGS.values():
        if (config.encoder.embed_dim, config.encoder.depth) == (embed_dim, depth):
            return config
    raise CheckpointError(
        f"{source}: encoder width {embed_dim}, depth {depth} matches no known architecture "
        f"({', '.join(CONFIGS)}); ViT-L/ViT-H SAM checkpoints are not supported"
    )


def _resize_pos_embed(tensor: torch.Tensor, grid: int) -> torch.Tensor:
    """(1, g0, g0, C) absolute position embedding -> (1, grid, grid, C), bicubic."""
    if tensor.shape[1] == grid:
        return tensor
    resized = F.interpolate(tensor.permute(0, 3, 1, 2).float(), size=(grid, grid), mode="bicubic", align_corners=False)
    return resized.permute(0, 2, 3, 1).to(tensor.dtype)


def _resize_rel_pos(tensor: torch.Tensor, length: int) -> torch.Tensor:
    """(2g0 - 1, C) relative position table -> (length, C), linear."""
    if tensor.shape[0] == length:
        return tensor
    resized = F.interpolate(tensor.t().unsqueeze(0).float(), size=length, mode="linear", align_corners=False)
    return resized[0].t().to(tensor.dtype)


def fit_to_input_size(state: dict[str, torch.Tensor], model: IMedSAM) -> dict[str, torch.Tensor]:
    """Interpolate the position embedding and global-attention rel-pos tables to the model's input size."""
    target = model.state_dict()
    fitted = dict(state)
    for key, value in state.items():
        if key not in target or target[key].shape == value.shape:
            continue
        if key == "image_encoder.pos_embed":
            fitted[key] = _resize_pos_embed(value, target[key].shape[1])
        elif key.endswith(("attn.rel_pos_h", "attn.rel_pos_w")):
            fitted[key] = _resize_rel_pos(value, target[key].shape[0])
    return fitted


def _is_new_in_imedsam(key: str) -> bool:
    """Tensors I-MedSAM adds to SAM: absent from a SAM checkpoint, initialised by the model."""
    return any(part in key for part in (".lora_", "freq_adapters.", "sf_adapters.", "coarse_inr.", "fine_inr."))


def load_sam_weights(model: IMedSAM, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Load a SAM-layout state dict into the frozen backbone; adapters and INR keep their init."""
    state = fit_to_input_size(dict(state), model)
    problems = tensor_mismatch(shapes_of(model.state_dict()), shapes_of(state), optional=_is_new_in_imedsam)
    if problems:
        raise CheckpointError(f"{source}: does not fit the {model.config.name} architecture: {problems}")
    model.load_state_dict(state, strict=False)


# ---- safetensors with a JSON header --------------------------------------------------------
def atomic_save_safetensors(tensors: dict[str, torch.Tensor], path: str | os.PathLike, header: dict[str, Any],
                            overwrite: bool = True) -> Path:
    """Write tensors + JSON header to `path` atomically (temp file in the same folder + rename);
    `overwrite=False` never replaces an existing file (`FileExistsError`)."""
    contiguous = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    metadata = {HEADER_KEY: json.dumps(header, sort_keys=True)}
    return atomic_write(path, safetensors_writer(contiguous, metadata), overwrite=overwrite)


def safetensors_writer(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None):
    """A writer for `atomic_write`: the safetensors bytes written by us, not by `save_file`, which reports a
    full disk as its own error type (not an OSError: no rescue, a traceback) and stages its own hidden
    temporary that a kill -9 leaves behind where nothing cleans it up."""
    def write(target: str) -> None:
        data = serialize_safetensors(tensors, metadata=metadata)
        with open(target, "wb") as handle:
            handle.write(data)

    return write


def read_safetensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors and the JSON header of one of our safetensors checkpoints."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path}: is a directory, not a checkpoint file")
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from None
    if HEADER_KEY not in metadata:
        raise CheckpointError(f"{path}: safetensors file without an '{HEADER_KEY}' header; not an I-MedSAM checkpoint")
    try:
        header = json.loads(metadata[HEADER_KEY])
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: header is not valid JSON ({exc})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: header is not a JSON object (found {type(header).__name__})")
    return tensors, header


def trainable_state(model: IMedSAM, groups: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
    """The tensors of the named parameter groups (default: all trainable groups), by state-dict name."""
    chosen = model.parameter_groups()
    names = set(groups) if groups is not None else set(chosen)
    return {
        name: param.detach()
        for group, params in chosen.items() if group in names
        for name, param in params
    }


def copy_network(network: IMedSAM, share_frozen: bool = True) -> IMedSAM:
    """A new network with its own copies of the trainable tensors (`trainable_state`: adapters, prompt
    encoder, upscaling, INRs) sharing every other parameter and buffer with `network`, so the frozen
    backbone is not copied; `share_frozen=False` copies everything (for training every weight)."""
    if not share_frozen:
        return copy.deepcopy(network)
    owned = set(trainable_state(network))
    named = chain(network.named_parameters(remove_duplicate=False), network.named_buffers(remove_duplicate=False))
    memo: dict[int, Any] = {id(tensor): tensor for name, tensor in named if name not in owned}
    return copy.deepcopy(network, memo)


def save_adapters(model: IMedSAM, path: str | os.PathLike, header: dict[str, Any], overwrite: bool = True) -> Path:
    """Save only trainable tensors (adapters, prompt encoder, upscaling, INR) with a JSON header.

    The header must carry `base_model` and `base_sha256`; the config is added here.
    """
    missing = {"base_model", "base_sha256"} - set(header)
    if missing:
        raise ValueError(f"adapter header needs {sorted(missing)}")
    full = {"format": "imedsam-adapters/1", "config": model.config.to_dict(), **header}
    return atomic_save_safetensors(trainable_state(model), path, full, overwrite=overwrite)


def _read_adapter_file(path: str | os.PathLike, model: IMedSAM, base_sha256: str | None
                       ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors and header of an adapter file, checked: its format, architecture and (when given) base."""
    tensors, header = read_safetensors(path)
    if header.get("format") != "imedsam-adapters/1":
        hint = {"imedsam-model/1": ": it is a whole model (train --mode full); load it as the model "
                                   "(--model FILE, or 'checkpoint file…' in the dock)",
                "corrector": ": it is a corrector; give it as the corrector (--corrector, or the dock's corrector "
                             "field)"}.get(header.get("format") or header.get("kind"), "")
        raise CheckpointError(f"{path}: not an adapter file (format {header.get('format')!r}){hint}")
    config = header.get("config", {})
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: header 'config' is not an object")
    if config.get("name") != model.config.name:
        raise CheckpointError(f"{path}: adapters for {config.get('name')!r}, but the model is {model.config.name!r}")
    if base_sha256 and header.get("base_sha256") not in (base_sha256, None):
        raise CheckpointError(
            f"{path}: adapters were trained on base {header.get('base_model')} "
            f"(sha256 {str(header.get('base_sha256'))[:12]}…), not on the loaded weights ({base_sha256[:12]}…)"
        )
    return tensors, header


def _add_modules_of(model: IMedSAM, config: dict[str, Any], where: str) -> None:
    """Adapter modules that an adapter file brings and its base lacks (SF-RecSAM's fusion, added by
    `train(add_sf_fusion=True)`): created on `model` before the file's tensors are loaded into them."""
    encoder = config.get("encoder", {})
    if not isinstance(encoder, dict) or encoder.get("sf_fusion") is not True or model.config.encoder.sf_fusion:
        return
    try:  # the header's config through the same bounds and type checks as a model file's
        model.add_sf_fusion(config_from_header(config).encoder.sf_hidden)
    except ValueError as exc:  # ConfigError included
        raise CheckpointError(f"{where}: {exc}") from None


def load_adapters(model: IMedSAM, source: str | os.PathLike | Mapping[str, torch.Tensor],
                  base_sha256: str | None = None) -> dict[str, Any]:
    """Load adapters into `model`: an adapter file (format, architecture and, when given, base hash
    checked) or a mapping of tensors; either must hold exactly the model's trainable tensors
    (`trainable_state`). Returns the file's header ({} for a mapping)."""
    if isinstance(source, Mapping):
        tensors, header, where = dict(source), {}, "in-memory adapters"
    else:
        (tensors, header), where = _read_adapter_file(source, model, base_sha256), str(source)
        _add_modules_of(model, header.get("config", {}), where)
    problems = tensor_mismatch(shapes_of(trainable_state(model)), shapes_of(tensors))
    if problems:
        raise CheckpointError(f"{where}: adapter tensors do not match the model: {problems}")
    model.load_state_dict(tensors, strict=False)
    return header


def save_model(model: IMedSAM, path: str | os.PathLike, header: dict[str, Any], half: bool = False,
               overwrite: bool = True) -> Path:
    """Save a whole network (our own trained models, e.g. the bundled demo) as safetensors."""
    state = {k: (v.half() if half and v.is_floating_point() else v) for k, v in model.state_dict().items()}
    full = {"format": "imedsam-model/1", "config": model.config.to_dict(), **header}
    return atomic_save_safetensors(state, path, full, overwrite=overwrite)


def read_model_file(path: str | os.PathLike) -> tuple[ModelConfig, dict[str, torch.Tensor], dict[str, Any]]:
    """Config, float32 state dict and header of a whole-model safetensors file."""
    tensors, header = read_safetensors(path)
    if header.get("format") != "imedsam-model/1":
        raise CheckpointError(f"{path}: not a whole-model file (format {header.get('format')!r}); "
                              "adapter files are loaded on top of a base model with --adapters")
    try:  # bounds and types first, then the tensors against the config: before anything is built
        config = config_from_header(header.get("config"))
        check_tensors(config, shapes_of(tensors))
        check_inference(header)
    except ConfigError as exc:
        raise CheckpointError(f"{path}: header has no usable model config ({exc})") from None
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in tensors.items()}
    return config, state, header

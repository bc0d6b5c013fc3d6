"""Cached prompt paths: training the INR heads of a model whose prompt path is frozen (the SAM-prior
models) without re-running SAM's two-way transformer and upscaling at every step.

Per object a few boxes (the tight one and jittered ones) go through the prompt path once; each keeps
the feature map and SAM logit only over the cells its decoded region needs (the box plus the decoder's
margin, one cell more on each side, so bilinear sampling there is exact), in float16, plus SAM's mask
token. A batch pads the windows to one size and passes their origins (`BoxPrompt.origin`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

from napari_imedsam.inference.preprocess import Geometry, normalized_points, region_around_box
from napari_imedsam.model.imedsam import BoxPrompt, IMedSAM, normalized_box
from napari_imedsam.model.inr import image_patches

from .fit import EncodedExample
from .points import jitter_box, sample_points


@dataclass
class CachedPrompt:
    maps: torch.Tensor  # (C_f + 1, h, w) float16: feature map and SAM logit over the region's cells
    origin: tuple[int, int]  # (x, y) first cell of the window in the 4g x 4g maps
    token: torch.Tensor  # (C,) SAM's mask token
    box: np.ndarray  # xyxy, image pixels


@dataclass
class CachedObject:
    name: str
    image: torch.Tensor  # (1, 3, H, W) normalised slice (float16), for Dec_f's image patches
    mask: np.ndarray
    geometry: Geometry
    prompts: list[CachedPrompt]


def _cells(low: float, high: float, size: int, extent: float, full: int) -> tuple[int, int]:
    """Cells of a `full`-cell map axis covering image pixel positions [low, high] (centres at integers)."""
    def cell(position: float) -> float:
        grid = ((2.0 * position + 1.0) / size) * extent - 1.0
        return ((grid + 1.0) * full - 1.0) / 2.0

    return max(0, math.floor(cell(low)) - 1), min(full, math.ceil(cell(high)) + 2)


def cache_object(network: IMedSAM, name: str, example: EncodedExample, rng: np.random.Generator,
                 variants: int = 3, jitter: float = 0.03) -> CachedObject:
    """Run the prompt path for the tight box and `variants - 1` jittered ones; keep each box's window."""
    geometry, shape = example.embedding.geometry, example.mask.shape
    boxes = [example.box] + [jitter_box(example.box, shape, rng, jitter) for _ in range(variants - 1)]
    inputs = torch.as_tensor(np.stack([geometry.box_to_input(b) for b in boxes]), dtype=torch.float32)
    extent = torch.tensor(geometry.extent, dtype=torch.float32)
    with torch.inference_mode():
        prompt = network.prompt(example.embedding.tensor.float(), inputs, extent)
    maps = torch.cat([prompt.feature_map, prompt.sam_mask_logits], dim=1)
    full = maps.shape[-1]
    prompts = []
    for index, box in enumerate(boxes):
        r0, r1, c0, c1 = region_around_box(box, shape)
        x0, x1 = _cells(c0 - 0.5, c1 - 0.5, shape[1], geometry.extent[0], full)
        y0, y1 = _cells(r0 - 0.5, r1 - 0.5, shape[0], geometry.extent[1], full)
        window = maps[index, :, y0:y1, x0:x1].half().clone()
        prompts.append(CachedPrompt(window, (x0, y0), prompt.token[index].clone(), np.asarray(box, float)))
    return CachedObject(name, example.embedding.image.half(), example.mask, geometry, prompts)


def cached_batch(network: IMedSAM, chosen: Sequence[tuple[CachedObject, int]], rng: np.random.Generator,
                 n_points: int, boundary_fraction: float = 0.5) -> tuple[BoxPrompt, dict[str, torch.Tensor]]:
    """A training batch from cached prompts: the prompt (windows padded to one size; prompt bias from the
    trainable projection of the cached tokens) and points, labels and image patches."""
    patch = network.config.decoder.fine_image_patch
    windows, origins, tokens, extents, points, labels, patches = [], [], [], [], [], [], []
    for obj, variant in chosen:
        cached = obj.prompts[variant]
        shape = obj.mask.shape
        rc, target = sample_points(obj.mask, region_around_box(cached.box, shape), n_points, boundary_fraction, rng)
        xy = normalized_points(rc[:, 0], rc[:, 1], shape)
        windows.append(cached.maps)
        origins.append(cached.origin)
        tokens.append(cached.token)
        extents.append(obj.geometry.extent)
        points.append(xy)
        labels.append(torch.from_numpy(target))
        if patch:
            patches.append(image_patches(obj.image, xy.unsqueeze(0), patch)[0])
    height = max(w.shape[1] for w in windows)
    width = max(w.shape[2] for w in windows)
    maps = torch.stack([F.pad(w.float(), (0, width - w.shape[2], 0, height - w.shape[1])) for w in windows])
    channels = maps.shape[1] - 1
    token = torch.stack(tokens).float()
    extent = torch.tensor(extents, dtype=torch.float32)
    inputs = torch.as_tensor(np.stack([obj.geometry.box_to_input(obj.prompts[v].box) for obj, v in chosen]),
                             dtype=torch.float32)
    prompt = BoxPrompt(feature_map=maps[:, :channels], prompt_bias=network.coarse_inr.prompt_bias(token),
                       extent=extent, sam_mask_logits=maps[:, channels:], token=token,
                       origin=torch.tensor(origins, dtype=torch.float32),
                       box=normalized_box(inputs, extent, network.config.encoder.img_size))
    batch = {"points": torch.stack(points), "labels": torch.stack(labels)}
    if patch:
        batch["patches"] = torch.stack(patches)
    return prompt, batch

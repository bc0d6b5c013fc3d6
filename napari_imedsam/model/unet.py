"""The small U-Net that the second stages share: the click refiner and the Dual False Corrector read a
stack of maps over one box region (resampled to a square) and answer per pixel."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F


def _block(inputs: int, outputs: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(inputs, outputs, 3, padding=1), nn.BatchNorm2d(outputs), nn.ReLU(),
                         nn.Conv2d(outputs, outputs, 3, padding=1), nn.BatchNorm2d(outputs), nn.ReLU())


class MapUNet(nn.Module):
    """(N, inputs, S, S) maps -> (N, outputs, S, S): `widths` channels per level, max-pool down, bilinear up
    with skip connections, a 1x1 convolution out."""

    def __init__(self, inputs: int, outputs: int, widths: tuple[int, ...]) -> None:
        super().__init__()
        self.down = nn.ModuleList([_block(inputs if i == 0 else widths[i - 1], w) for i, w in enumerate(widths)])
        self.up = nn.ModuleList([_block(widths[i + 1] + widths[i], widths[i])
                                 for i in reversed(range(len(widths) - 1))])
        self.out = nn.Conv2d(widths[0], outputs, 1)

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        skips = []
        x = maps
        for level, block in enumerate(self.down):
            x = block(x if level == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        x = skips.pop()
        for block in self.up:
            skip = skips.pop()
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skip], 1))
        return self.out(x)

    def held_back(self, key: str) -> tuple[float, float] | None:
        """(without it, with it): the score `key` its training measured on held-back images, as its file's
        header records it (`metrics_before`, `metrics`); None when the header lacks either."""
        header = getattr(self, "header", None) or {}
        scores = tuple(header.get(part, {}).get(key) for part in ("metrics_before", "metrics"))
        return None if None in scores else scores


def save_second_stage(network: MapUNet, path, header: dict, kind: str) -> Path:
    """Write a second stage's tensors and header (its `kind`, its config under that key, what training
    measured) atomically; never over an existing file."""
    from .weights import atomic_save_safetensors

    return atomic_save_safetensors(network.state_dict(), path,
                                   {**header, "kind": kind, kind: network.config.to_dict()}, overwrite=False)


def load_second_stage(path, kind: str, build: Callable[[dict], MapUNet],
                      check: Callable[[dict], None] | None = None) -> MapUNet:
    """A second stage's file: its header must say `kind` and hold that config; `check(header)` may refuse
    it; `build(settings)` makes the network its tensors load into. Returned in eval mode, frozen, with
    its header as `.header`."""
    from ..errors import CheckpointError
    from .weights import read_safetensors

    name = kind.replace("_", "-")
    tensors, header = read_safetensors(path)
    if header.get("kind") != kind or not isinstance(header.get(kind), dict):
        raise CheckpointError(f"{path}: not a {name} file (no {kind} header)")
    if check is not None:
        check(header)
    try:
        settings = dict(header[kind])
        if "widths" in settings:
            settings["widths"] = tuple(settings["widths"])  # JSON gives a list
        network = build(settings)
        network.load_state_dict(tensors)
    except (TypeError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: {name} tensors do not match its header ({exc})") from None
    network.header = header  # what its training measured (`helps`, `metrics_before`, `metrics`)
    return network.eval().requires_grad_(False)

"""The small U-Net that the second stages share: the click refiner and the Dual False Corrector read a
stack of maps over one box region (resampled to a square) and answer per pixel."""

from __future__ import annotations

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

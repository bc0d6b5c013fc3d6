"""Frequency adapter (FA): the image's Fourier spectrum, carried alongside the ViT blocks."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def fourier_spectrum(images: torch.Tensor, kind: str = "amplitude") -> torch.Tensor:
    """Per-image normalised spectrum of the grey image, shape (B, 1, H, W).

    Grey is the mean of the channels (the reference code used the red channel only: a bug for
    RGB endoscopy and harmless for grey CT, so the mean is right for both). Computed with
    `torch.fft` on the input's device (the reference round-tripped through numpy on the CPU).
    Amplitude is log-compressed (|F| spans many decades); phase is scaled to [-1, 1].
    """
    grey = images.float().mean(dim=1)
    spectrum = torch.fft.fftshift(torch.fft.fft2(grey, norm="ortho"), dim=(-2, -1))
    if kind == "amplitude":
        values = torch.log1p(spectrum.abs())
    elif kind == "phase":
        values = torch.angle(spectrum) / torch.pi
    else:
        raise ValueError(f"unknown spectrum kind {kind!r}; use 'amplitude' or 'phase'")
    mean = values.mean(dim=(-2, -1), keepdim=True)
    std = values.std(dim=(-2, -1), keepdim=True).clamp_min(1e-6)
    return ((values - mean) / std).unsqueeze(1)


class FrequencyAdapter(nn.Module):
    """One per ViT block: LayerNorm -> Linear(C, h) -> GELU -> Linear(h, C), residual.

    Its running frequency feature is added to the block output times `scale`, a trainable
    scalar that starts at 0 (the reference added a fixed 0.5 from step 0, which perturbs SAM's
    features before any training has happened).
    """

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.down = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.up = nn.Linear(hidden, dim)
        self.scale = nn.Parameter(torch.zeros(()))

    def forward(self, freq: torch.Tensor) -> torch.Tensor:
        """Advance the frequency stream by one block; returns the new stream."""
        return freq + self.up(self.act(self.down(self.norm(freq))))


def adapted_blocks(blocks: Sequence[nn.Module], x: torch.Tensor, freq: torch.Tensor | None,
                   adapters: Sequence[FrequencyAdapter]) -> torch.Tensor:
    """Run `blocks` in turn; with a frequency stream `freq`, each block's adapter advances it and adds it
    to the block's output times the adapter's `scale`."""
    for index, block in enumerate(blocks):
        x = block(x)
        if freq is not None:
            adapter = adapters[index]
            freq = adapter(freq)
            x = x + adapter.scale * freq
    return x

"""Frequency adapters: I-MedSAM's (the image's Fourier spectrum, carried alongside the ViT blocks) and
SF-RecSAM's spatial-frequency fusion (a learnable filter on each block's feature spectrum)."""

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
                   adapters: Sequence[FrequencyAdapter], fusions: Sequence[nn.Module] = ()) -> torch.Tensor:
    """Run `blocks` in turn; with a frequency stream `freq`, each block's adapter advances it and adds it
    to the block's output times the adapter's `scale`; with `fusions` (SF-RecSAM's spatial-frequency
    fusion, one per block), each then fuses the block's output with its own spectrum."""
    for index, block in enumerate(blocks):
        x = block(x)
        if freq is not None:
            adapter = adapters[index]
            freq = adapter(freq)
            x = x + adapter.scale * freq
        if fusions:
            x = fusions[index](x)
    return x


class SpatialFrequencyFusion(nn.Module):
    """SF-RecSAM's spatial-frequency fusion as a per-block adapter on (B, H, W, C) ViT tokens.

    The tokens are projected to `hidden` channels; one branch filters their 2D FFT with a learnable
    complex filter (one per channel and frequency, starting at 1: the identity) and returns to space,
    the other is a depthwise 3x3 convolution (the local, spatial view). A selective attention weighs
    the two branches per channel from their pooled responses (softmax over the branches), and the
    fused result is projected back and added to the tokens times `scale`, a trainable scalar that
    starts at 0, so a new fusion adapter leaves the encoder's output exactly as it was.
    """

    def __init__(self, dim: int, hidden: int, grid: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.down = nn.Linear(dim, hidden)
        self.spectral_filter = nn.Parameter(torch.stack(
            [torch.ones(hidden, grid, grid // 2 + 1), torch.zeros(hidden, grid, grid // 2 + 1)], dim=-1))
        self.spatial = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.attention = nn.Linear(2 * hidden, 2 * hidden)
        self.up = nn.Linear(hidden, dim)
        self.scale = nn.Parameter(torch.zeros(()))

    def _filter(self, height: int, width: int) -> torch.Tensor:
        """The complex filter at an rfft2 grid of (height, width // 2 + 1), resized if the token grid
        is not the one it was made for (another input size)."""
        weights = self.spectral_filter
        size = (height, width // 2 + 1)
        if tuple(weights.shape[1:3]) != size:
            resized = nn.functional.interpolate(weights.permute(0, 3, 1, 2), size=size, mode="bilinear",
                                                align_corners=True)
            weights = resized.permute(0, 2, 3, 1).contiguous()
        return torch.view_as_complex(weights.float())

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (B, H, W, C) -> tokens with the fused spatial-frequency features added."""
        batch, height, width, _ = tokens.shape
        z = self.down(self.norm(tokens)).permute(0, 3, 1, 2)  # (B, h, H, W)
        spectrum = torch.fft.rfft2(z.float(), norm="ortho") * self._filter(height, width)
        frequency = torch.fft.irfft2(spectrum, s=(height, width), norm="ortho").to(z.dtype)
        spatial = self.spatial(z)
        pooled = torch.cat([spatial.mean(dim=(-2, -1)), frequency.mean(dim=(-2, -1))], dim=-1)  # (B, 2h)
        weight = self.attention(pooled).view(batch, 2, -1).softmax(dim=1)[..., None, None]  # (B, 2, h, 1, 1)
        fused = weight[:, 0] * spatial + weight[:, 1] * frequency
        return tokens + self.scale * self.up(nn.functional.gelu(fused.permute(0, 2, 3, 1)))

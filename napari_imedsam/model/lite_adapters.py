"""LoRA and frequency adapters for LiteMedSAM's TinyViT (pure torch; nothing here imports TinyViT).

TinyViT's fused `qkv` projection is laid out per head, [q (key_dim), k (key_dim), v (d)] for head 0,
then head 1, ... (its attention does `qkv.view(B, N, heads, -1).split([key_dim, key_dim, d])`), not
SAM's [all q, all k, all v]. `HeadwiseLoRAQKV` puts the rank-r updates onto exactly the q and v rows.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from .frequency import FrequencyAdapter
from .lora import copy_linear


class HeadwiseLoRAQKV(nn.Linear):
    """TinyViT's fused qkv `nn.Linear` plus W_q + B_q A_q and W_v + B_v A_v, rows mapped per head.

    It subclasses `nn.Linear`, so `weight` and `bias` keep LiteMedSAM's state-dict names. A is
    kaiming-uniform and B zero: an untrained adapter leaves the projection exactly unchanged (and is
    skipped outright at inference, so the untrained encoder costs nothing extra).
    """

    def __init__(self, dim: int, heads: int, key_dim: int, value_dim: int, rank: int, bias: bool = True) -> None:
        super().__init__(dim, heads * (2 * key_dim + value_dim), bias=bias)
        self.heads, self.key_dim, self.value_dim, self.rank = heads, key_dim, value_dim, rank
        self.lora_q_a = nn.Parameter(torch.empty(rank, dim))
        self.lora_q_b = nn.Parameter(torch.zeros(heads * key_dim, rank))
        self.lora_v_a = nn.Parameter(torch.empty(rank, dim))
        self.lora_v_b = nn.Parameter(torch.zeros(heads * value_dim, rank))
        nn.init.kaiming_uniform_(self.lora_q_a, a=math.sqrt(5))
        nn.init.kaiming_uniform_(self.lora_v_a, a=math.sqrt(5))

    @classmethod
    def from_linear(cls, linear: nn.Linear, heads: int, key_dim: int, value_dim: int, rank: int) -> HeadwiseLoRAQKV:
        """Wrap an existing TinyViT qkv projection (weights copied, not re-initialised)."""
        layer = cls(linear.in_features, heads, key_dim, value_dim, rank, bias=linear.bias is not None)
        if layer.out_features != linear.out_features:
            raise ValueError(f"qkv has {linear.out_features} outputs; heads/key_dim/value_dim give "
                             f"{layer.out_features}")
        return copy_linear(layer, linear)

    def row_delta(self, x: torch.Tensor) -> torch.Tensor:
        """The LoRA update in qkv's own row order: (..., heads * (2 key_dim + value_dim))."""
        shape = x.shape[:-1]
        delta_q = ((x @ self.lora_q_a.t()) @ self.lora_q_b.t()).reshape(*shape, self.heads, self.key_dim)
        delta_v = ((x @ self.lora_v_a.t()) @ self.lora_v_b.t()).reshape(*shape, self.heads, self.value_dim)
        return torch.cat([delta_q, torch.zeros_like(delta_q), delta_v], dim=-1).flatten(-2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        qkv = F.linear(x, self.weight, self.bias)
        if not torch.is_grad_enabled() and not (self.lora_q_b.any() or self.lora_v_b.any()):
            return qkv  # B = 0: the update is exactly zero
        return qkv + self.row_delta(x)


class StageFrequencyStream(nn.Module):
    """The frequency-adapter stream of one TinyViT attention stage (all its blocks share a grid).

    TinyViT has no single patch embedding shared by its stages (the stem runs at full resolution
    with convolutions, stages change width and grid), so each stage embeds the spectrum itself: the
    normalised amplitude spectrum is cut into the stage's token grid by space-to-depth (a 256 px
    spectrum on a 64x64 grid gives 4x4 = 16 values per token) and projected to the stage width by a
    trainable linear map. Each block then advances the stream with a `FrequencyAdapter` (LayerNorm,
    C -> h -> C, residual) and adds it to its output times that adapter's zero-initialised scale.
    """

    def __init__(self, dim: int, grid: int, img_size: int, hidden: int, blocks: int) -> None:
        super().__init__()
        if img_size % grid:
            raise ValueError(f"a {grid}x{grid} token grid does not tile a {img_size} px spectrum")
        self.grid = grid
        self.cell = img_size // grid
        self.embed = nn.Linear(self.cell * self.cell, dim)
        self.blocks = nn.ModuleList(FrequencyAdapter(dim, hidden) for _ in range(blocks))

    def tokens(self, spectrum: torch.Tensor) -> torch.Tensor:
        """(B, 1, S, S) spectrum -> (B, grid * grid, dim) stream, row-major like TinyViT's tokens."""
        cells = F.pixel_unshuffle(spectrum, self.cell)  # (B, cell^2, grid, grid)
        return self.embed(cells.flatten(2).transpose(1, 2))

    def active(self) -> bool:
        """Whether the stream can change the encoder's output (some scale non-zero, or training)."""
        return torch.is_grad_enabled() or any(bool(block.scale != 0) for block in self.blocks)

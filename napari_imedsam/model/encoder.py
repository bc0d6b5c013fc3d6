"""SAM's ViT image encoder (segment-anything's own module) with LoRA and frequency adapters."""

from __future__ import annotations

from functools import partial

import torch
from segment_anything.modeling import ImageEncoderViT
from torch import nn

from .config import EncoderConfig
from .frequency import FrequencyAdapter, SpatialFrequencyFusion, adapted_blocks, fourier_spectrum
from .lora import LoRAQKV


class AdaptedImageEncoder(ImageEncoderViT):
    """`ImageEncoderViT` whose blocks carry LoRA(q, v), a frequency-adapter stream and, optionally,
    SF-RecSAM's spatial-frequency fusion.

    State-dict names of the frozen parts are SAM's own; adapter tensors live under
    `blocks.N.attn.qkv.lora_*`, `freq_adapters.N.*` and `sf_adapters.N.*`.
    """

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__(
            img_size=config.img_size,
            patch_size=config.patch_size,
            embed_dim=config.embed_dim,
            depth=config.depth,
            num_heads=config.num_heads,
            mlp_ratio=config.mlp_ratio,
            out_chans=config.out_chans,
            qkv_bias=True,
            norm_layer=partial(nn.LayerNorm, eps=1e-6),
            use_abs_pos=True,
            use_rel_pos=True,
            window_size=config.window_size,
            global_attn_indexes=config.global_attn_indexes,
        )
        self.config = config
        for block in self.blocks:
            block.attn.qkv = LoRAQKV.from_linear(block.attn.qkv, config.lora_rank)
        self.use_frequency = config.fa_spectrum != "none"
        self.freq_adapters = nn.ModuleList(
            FrequencyAdapter(config.embed_dim, config.fa_hidden) for _ in range(config.depth)
        ) if self.use_frequency else nn.ModuleList()
        self.sf_adapters = nn.ModuleList()
        if config.sf_fusion:
            self.add_sf_fusion(config.sf_hidden)

    def add_sf_fusion(self, hidden: int) -> None:
        """Give every block a new SF-RecSAM fusion adapter (`scale` 0: the output is unchanged until trained)."""
        reference = self.patch_embed.proj.weight
        self.sf_adapters = nn.ModuleList(
            SpatialFrequencyFusion(self.config.embed_dim, hidden, self.config.grid_size)
            for _ in range(self.config.depth)
        ).to(device=reference.device)

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        return x + self.pos_embed if self.pos_embed is not None else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) normalised image -> (B, out_chans, S/16, S/16) embedding."""
        tokens = self._embed(x)
        freq = None
        if self.use_frequency:
            # The spectrum goes through the same frozen patch + position embedding as the image.
            spectrum = fourier_spectrum(x, self.config.fa_spectrum).expand(-1, 3, -1, -1)
            freq = self._embed(spectrum.to(x.dtype))
        tokens = adapted_blocks(self.blocks, tokens, freq, self.freq_adapters, self.sf_adapters)
        return self.neck(tokens.permute(0, 3, 1, 2))

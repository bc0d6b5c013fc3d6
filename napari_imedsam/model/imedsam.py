"""The whole I-MedSAM network: encode(image) -> embedding; prompt(embedding, box); decode points."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from segment_anything.modeling import MaskDecoder, PromptEncoder, TwoWayTransformer
from torch import nn
from torch.nn import functional as F

from .config import ModelConfig
from .encoder import AdaptedImageEncoder
from .inr import (
    CoarseINR,
    CoarseOutput,
    FineINR,
    mc_keep_masks,
    mc_uncertainty,
    positional_encoding,
    refine_count,
)

# SAM's pixel normalisation (0-255 RGB); non-persistent buffers, as in SAM (not in checkpoints).
PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)


@dataclass
class BoxPrompt:
    """What the INR needs for one batch of boxes: SAM's upscaled feature map and a prompt bias."""

    feature_map: torch.Tensor  # (B, C_f, 4g, 4g) over the padded encoder input
    prompt_bias: torch.Tensor  # (B, 1, hidden0) Dec_c first-layer share of the prompt feature
    extent: torch.Tensor  # (B, 2) fraction (x, y) of the padded square covered by the image
    sam_mask_logits: torch.Tensor  # (B, 1, 4g, 4g) SAM's own single-mask output (baseline)


class IMedSAM(nn.Module):
    """SAM ViT encoder (+ LoRA, FA), SAM prompt encoder and two-way transformer, coarse/fine INR."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        enc, dec = config.encoder, config.decoder
        dim, grid = enc.out_chans, enc.grid_size
        self.image_encoder = AdaptedImageEncoder(enc)
        self.prompt_encoder = PromptEncoder(
            embed_dim=dim,
            image_embedding_size=(grid, grid),
            input_image_size=(enc.img_size, enc.img_size),
            mask_in_chans=16,
        )
        self.mask_decoder = MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(
                depth=dec.transformer_depth,
                embedding_dim=dim,
                mlp_dim=dec.transformer_mlp_dim,
                num_heads=dec.transformer_heads,
            ),
            transformer_dim=dim,
            iou_head_depth=3,
            iou_head_hidden_dim=256 if dim == 256 else dim,
        )
        point_dim = config.feature_map_dim + dec.point_feature_dim
        self.coarse_inr = CoarseINR(
            point_dim, config.prompt_dim, dec.coarse_hidden, dec.coarse_feature_dim, dec.dropout
        )
        self.fine_inr = FineINR(point_dim, dec.coarse_feature_dim, dec.fine_hidden)
        self.register_buffer("pixel_mean", torch.tensor(PIXEL_MEAN).view(-1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(PIXEL_STD).view(-1, 1, 1), persistent=False)

    # ---- parameter groups -------------------------------------------------------------
    def parameter_groups(self) -> dict[str, list[tuple[str, nn.Parameter]]]:
        """Trainable parts by component, as (state-dict name, parameter); frozen SAM weights excluded."""
        decoder = self.mask_decoder
        return {
            "lora": [(f"image_encoder.{n}", p) for n, p in self.image_encoder.named_parameters() if "lora_" in n],
            "frequency_adapter": [
                (f"image_encoder.{n}", p) for n, p in self.image_encoder.named_parameters() if "freq_adapters" in n
            ],
            "prompt_encoder": [(f"prompt_encoder.{n}", p) for n, p in self.prompt_encoder.named_parameters()],
            "output_upscaling": [
                (f"mask_decoder.output_upscaling.{n}", p) for n, p in decoder.output_upscaling.named_parameters()
            ],
            "coarse_inr": [(f"coarse_inr.{n}", p) for n, p in self.coarse_inr.named_parameters()],
            "fine_inr": [(f"fine_inr.{n}", p) for n, p in self.fine_inr.named_parameters()],
        }

    # ---- encoder ----------------------------------------------------------------------
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) 0-255 RGB, resized and zero-padded -> (B, C, g, g) image embedding."""
        return self.image_encoder((images - self.pixel_mean) / self.pixel_std)

    # ---- prompt path --------------------------------------------------------------------
    def prompt(self, embedding: torch.Tensor, boxes: torch.Tensor, extent: torch.Tensor,
               points: tuple[torch.Tensor, torch.Tensor] | None = None) -> BoxPrompt:
        """Run SAM's prompt encoder and two-way transformer for boxes on one embedding.

        embedding (1, C, g, g) or (B, C, g, g); boxes (B, 4) xyxy in encoder-input pixels;
        extent (2,) or (B, 2): the fraction of the padded square the image covers.
        """
        # points: (coords (B, N, 2) in encoder-input pixels, labels (B, N) 1 = positive / 0 = negative)
        sparse, dense = self.prompt_encoder(points=points, boxes=boxes, masks=None)
        decoder = self.mask_decoder
        tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
        tokens = torch.cat([tokens.unsqueeze(0).expand(sparse.shape[0], -1, -1), sparse], dim=1)
        if embedding.shape[0] == 1 and boxes.shape[0] > 1:
            embedding = embedding.expand(boxes.shape[0], -1, -1, -1)
        src = embedding + dense
        pos = self.prompt_encoder.get_dense_pe().expand(src.shape[0], -1, -1, -1)
        b, c, h, w = src.shape
        hs, src_out = decoder.transformer(src, pos, tokens)
        feature_map = decoder.output_upscaling(src_out.transpose(1, 2).reshape(b, c, h, w))
        # The single-mask token (SAM's choice for an unambiguous box) is the prompt feature.
        mask_token = hs[:, 1, :]
        hyper = decoder.output_hypernetworks_mlps[0](mask_token)
        sam_logits = torch.einsum("bc,bchw->bhw", hyper, feature_map).unsqueeze(1)
        extent = extent.reshape(-1, 2).expand(b, 2).to(feature_map)
        return BoxPrompt(feature_map, self.coarse_inr.prompt_bias(mask_token), extent, sam_logits)

    # ---- implicit decoder ---------------------------------------------------------------
    def point_input(self, prompt: BoxPrompt, points: torch.Tensor) -> torch.Tensor:
        """Per-point input: bilinear feature sample + positional encoding. points (B, P, 2) xy in [-1, 1]."""
        grid = (points + 1.0) * prompt.extent.unsqueeze(1) - 1.0  # image coords -> padded square
        sampled = F.grid_sample(
            prompt.feature_map, grid.unsqueeze(2), mode="bilinear", align_corners=False
        )  # (B, C_f, P, 1)
        features = sampled.squeeze(-1).transpose(1, 2)
        return torch.cat([features, positional_encoding(points, self.config.decoder.pe_frequencies)], dim=-1)

    def coarse(self, prompt: BoxPrompt, point_input: torch.Tensor) -> CoarseOutput:
        return self.coarse_inr(point_input, prompt.prompt_bias)

    def fine(self, point_input: torch.Tensor, coarse_feature: torch.Tensor) -> torch.Tensor:
        return self.fine_inr(point_input, coarse_feature)

    def uncertainty(self, coarse: CoarseOutput, seed: int = 0) -> torch.Tensor:
        """Uncertainty of the coarse probability from T seeded MC-dropout passes (dropout ON); the
        kind (predictive / epistemic) is `config.decoder.uncertainty`."""
        dec = self.config.decoder
        masks = mc_keep_masks(dec.mc_passes, coarse.trunk.shape[-1], dec.dropout, seed, coarse.trunk.device)
        return mc_uncertainty(self.coarse_inr.mc_logits(coarse.trunk, masks), dec.uncertainty)

    def forward_train(self, embedding: torch.Tensor, boxes: torch.Tensor, extent: torch.Tensor,
                      points: torch.Tensor) -> dict[str, torch.Tensor]:
        """Training pass at sampled points: coarse logits (dropout on) and fine logits at the
        UGS-selected points. Returns coarse_logit (B, P), fine_logit (B, K), fine_index (B, K)."""
        prompt = self.prompt(embedding, boxes, extent)
        point_input = self.point_input(prompt, points)
        coarse = self.coarse(prompt, point_input)
        coarse_logit = self.coarse_inr.dropout_logit(coarse.trunk)
        with torch.no_grad():
            uncertainty = self.uncertainty(coarse, seed=int(torch.randint(0, 2**31 - 1, ()).item()))
        k = refine_count(points.shape[1], self.config.decoder.refine_fraction)
        top = uncertainty.topk(k, dim=1).indices.unsqueeze(-1)
        fine_logit = self.fine_inr(
            point_input.gather(1, top.expand(-1, -1, point_input.shape[-1])),
            coarse.feature.gather(1, top.expand(-1, -1, coarse.feature.shape[-1])),
        )
        return {"coarse_logit": coarse_logit, "fine_logit": fine_logit, "fine_index": top.squeeze(-1)}


def build_model(config: ModelConfig) -> IMedSAM:
    """Build an untrained network for a config (weights are loaded by `weights.load_model`)."""
    return IMedSAM(config)

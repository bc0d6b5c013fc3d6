"""The whole I-MedSAM network: encode(image) -> embedding; prompt(embedding, box); decode points."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

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
    image_patches,
    mc_keep_masks,
    mc_uncertainty,
    positional_encoding,
    refine_count,
    squash_logit,
)
from .lite import LiteImageEncoder

# SAM's pixel normalisation (0-255 RGB); non-persistent buffers, as in SAM (not in checkpoints).
PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)
# LiteMedSAM takes the image in [0, 1]: (x - 0) / 255.
LITE_PIXEL_MEAN, LITE_PIXEL_STD = (0.0, 0.0, 0.0), (255.0, 255.0, 255.0)


@dataclass
class BoxPrompt:
    """What the INR needs for one batch of boxes: SAM's upscaled feature map and a prompt bias."""

    feature_map: torch.Tensor  # (B, C_f, 4g, 4g) over the padded encoder input
    prompt_bias: torch.Tensor  # (B, 1, hidden0) Dec_c first-layer share of the prompt feature
    extent: torch.Tensor  # (B, 2) fraction (x, y) of the padded square covered by the image
    sam_mask_logits: torch.Tensor  # (B, 1, 4g, 4g) SAM's own single-mask output (baseline)
    image: torch.Tensor | None = None  # (1, 3, H, W) normalised slice in [0, 1], for Dec_f's image patches
    # (B, 2) xy cell where feature_map / sam_mask_logits start when they hold only a window of the
    # 4g x 4g maps (training caches the region around each box); None: the whole maps.
    origin: torch.Tensor | None = None
    token: torch.Tensor | None = None  # (B, C) SAM's single-mask output token (what prompt_bias is made from)
    box: torch.Tensor | None = None  # (B, 4) the box, xyxy in the image's [-1, 1] coordinates


class TrainOutputs(NamedTuple):
    """A training pass at sampled points (a named tuple, so DistributedDataParallel finds its tensors)."""

    coarse_logit: torch.Tensor  # (B, P) Dec_c at every sampled point, dropout on
    fine_logit: torch.Tensor  # (B, K) Dec_f at the points UGS chose
    fine_index: torch.Tensor  # (B, K) which sampled points those are


def normalized_box(boxes: torch.Tensor, extent: torch.Tensor, input_size: int) -> torch.Tensor:
    """Boxes in encoder-input pixels (B, 4) -> xyxy in the image's [-1, 1] coordinates (B, 4)."""
    span = (extent.reshape(-1, 2) * input_size).repeat(1, 2).to(boxes)
    return 2.0 * boxes / span - 1.0


class IMedSAM(nn.Module):
    """SAM ViT encoder (+ LoRA, FA), SAM prompt encoder and two-way transformer, coarse/fine INR."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        enc, dec = config.encoder, config.decoder
        dim, grid = enc.out_chans, enc.grid_size
        self.image_encoder = LiteImageEncoder(enc) if enc.backbone == "lite" else AdaptedImageEncoder(enc)
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
        # Point input columns: [features | positional encoding | box-relative position | squashed SAM logit |
        # image patch (Dec_f only) | raw SAM logit (prior, added to Dec_c's output)].
        self.coarse_dim = (config.feature_map_dim + dec.point_feature_dim + 2 * int(dec.box_relative)
                           + int(dec.sam_prior))
        self.fine_dim = self.coarse_dim + 3 * dec.fine_image_patch ** 2
        residual = dec.fine_image_patch > 0
        self.coarse_inr = CoarseINR(
            self.coarse_dim, config.prompt_dim, dec.coarse_hidden, dec.coarse_feature_dim, dec.dropout
        )
        if dec.sam_prior:
            self.coarse_inr.start_at_prior()
        self.fine_inr = FineINR(self.fine_dim, dec.coarse_feature_dim + int(residual), dec.fine_hidden, residual)
        lite = enc.backbone == "lite"
        mean, std = (LITE_PIXEL_MEAN, LITE_PIXEL_STD) if lite else (PIXEL_MEAN, PIXEL_STD)
        self.register_buffer("pixel_mean", torch.tensor(mean).view(-1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(std).view(-1, 1, 1), persistent=False)

    # ---- parameter groups -------------------------------------------------------------
    def parameter_groups(self) -> dict[str, list[tuple[str, nn.Parameter]]]:
        """Trainable parts by component, as (state-dict name, parameter); frozen SAM weights excluded.
        With a SAM prior the prompt encoder and output upscaling are frozen too (empty groups)."""
        decoder = self.mask_decoder
        frozen_prompt_path = self.config.decoder.sam_prior
        return {
            "lora": [(f"image_encoder.{n}", p) for n, p in self.image_encoder.named_parameters() if "lora_" in n],
            "frequency_adapter": [
                (f"image_encoder.{n}", p) for n, p in self.image_encoder.named_parameters()
                if "freq_adapters" in n or "sf_adapters" in n
            ],
            "prompt_encoder": [] if frozen_prompt_path else [
                (f"prompt_encoder.{n}", p) for n, p in self.prompt_encoder.named_parameters()
            ],
            "output_upscaling": [] if frozen_prompt_path else [
                (f"mask_decoder.output_upscaling.{n}", p) for n, p in decoder.output_upscaling.named_parameters()
            ],
            "coarse_inr": [(f"coarse_inr.{n}", p) for n, p in self.coarse_inr.named_parameters()],
            "fine_inr": [(f"fine_inr.{n}", p) for n, p in self.fine_inr.named_parameters()],
        }

    def add_sf_fusion(self, hidden: int) -> None:
        """Add SF-RecSAM's spatial-frequency fusion adapter to every encoder block (it starts as the
        identity); the config says so from then on, so saved adapters bring the modules with them."""
        from dataclasses import replace

        from .checks import check_config

        config = replace(self.config, encoder=replace(self.config.encoder, sf_fusion=True, sf_hidden=hidden))
        check_config(config)  # ConfigError (a ValueError): e.g. not a ViT backbone
        self.config = config
        self.image_encoder.config = config.encoder
        self.image_encoder.add_sf_fusion(hidden)

    # ---- encoder ----------------------------------------------------------------------
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) 0-255 RGB, resized and zero-padded -> (B, C, g, g) image embedding (SAM's
        normalisation for ViT backbones; [0, 1] for LiteMedSAM)."""
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
        box = normalized_box(boxes, extent, self.config.encoder.img_size)
        return BoxPrompt(feature_map, self.coarse_inr.prompt_bias(mask_token), extent, sam_logits, token=mask_token,
                         box=box)

    # ---- implicit decoder ---------------------------------------------------------------
    def point_input(self, prompt: BoxPrompt, points: torch.Tensor, patches: torch.Tensor | None = None
                    ) -> torch.Tensor:
        """Per-point input: bilinear feature sample + positional encoding (+ SAM logit, image patch; see
        `__init__` for the columns). points (B, P, 2) xy in [-1, 1]; `patches` (B, P, 3 k^2) when the
        caller has them (training batches), else sampled from `prompt.image`."""
        dec = self.config.decoder
        grid = (points + 1.0) * prompt.extent.unsqueeze(1) - 1.0  # image coords -> padded square
        maps = torch.cat([prompt.feature_map, prompt.sam_mask_logits], 1) if dec.sam_prior else prompt.feature_map
        if prompt.origin is not None:  # the maps hold a window of the full 4g x 4g maps: shift and rescale
            full = 4 * self.config.encoder.grid_size
            cells = ((grid + 1.0) * full - 1.0) / 2.0 - prompt.origin.unsqueeze(1)
            held = torch.tensor([maps.shape[-1], maps.shape[-2]], dtype=grid.dtype, device=grid.device)
            grid = (2.0 * cells + 1.0) / held - 1.0
        sampled = F.grid_sample(maps, grid.unsqueeze(2), mode="bilinear", align_corners=False)  # (B, C, P, 1)
        sampled = sampled.squeeze(-1).transpose(1, 2)
        channels = self.config.feature_map_dim
        parts = [sampled[..., :channels], positional_encoding(points, dec.pe_frequencies)]
        if dec.box_relative:
            centre = (prompt.box[:, None, :2] + prompt.box[:, None, 2:]) / 2.0
            half = ((prompt.box[:, None, 2:] - prompt.box[:, None, :2]) / 2.0).clamp_min(1e-3)
            parts.append((points - centre) / half)
        if dec.sam_prior:
            parts.append(squash_logit(sampled[..., channels:]))
        if dec.fine_image_patch:
            if patches is None:
                if prompt.image is None:
                    raise ValueError("this model's fine INR reads the image: set BoxPrompt.image")
                image = prompt.image.expand(points.shape[0], -1, -1, -1)
                patches = image_patches(image, points, dec.fine_image_patch)
            parts.append(patches.to(sampled.dtype))
        if dec.sam_prior:
            parts.append(sampled[..., channels:])
        return torch.cat(parts, dim=-1)

    def coarse(self, prompt: BoxPrompt, point_input: torch.Tensor) -> CoarseOutput:
        prior = point_input[..., -1] if self.config.decoder.sam_prior else None
        coarse = self.coarse_inr(point_input[..., :self.coarse_dim], prompt.prompt_bias, prior)
        if self.fine_inr.residual:  # Dec_f corrects the coarse logit: pass it on as the feature's last column
            coarse.feature = torch.cat([coarse.feature, coarse.logit.unsqueeze(-1)], dim=-1)
        return coarse

    def fine(self, point_input: torch.Tensor, coarse_feature: torch.Tensor) -> torch.Tensor:
        return self.fine_inr(point_input[..., :self.fine_dim], coarse_feature)

    def uncertainty(self, coarse: CoarseOutput, seed: int = 0) -> torch.Tensor:
        """Uncertainty of the coarse probability from T seeded MC-dropout passes (dropout ON); the
        kind (predictive / epistemic) is `config.decoder.uncertainty`."""
        dec = self.config.decoder
        masks = mc_keep_masks(dec.mc_passes, coarse.trunk.shape[-1], dec.dropout, seed, coarse.trunk.device)
        return mc_uncertainty(self.coarse_inr.mc_logits(coarse.trunk, masks, coarse.prior), dec.uncertainty)

    def forward_train(self, embedding: torch.Tensor, boxes: torch.Tensor, extent: torch.Tensor,
                      points: torch.Tensor, patches: torch.Tensor | None = None,
                      clicks: tuple[torch.Tensor, torch.Tensor] | None = None) -> TrainOutputs:
        """Training pass at sampled points: coarse logits (dropout on) and fine logits at the
        UGS-selected points (see `TrainOutputs`).
        `patches` (B, P, 3 k^2): the image around each point, for models whose Dec_f reads it;
        `clicks`: click prompts (coords (B, N, 2) in encoder pixels, labels (B, N)) with the boxes."""
        return self.train_outputs(self.prompt(embedding, boxes, extent, points=clicks), points, patches)

    def train_outputs(self, prompt: BoxPrompt, points: torch.Tensor, patches: torch.Tensor | None = None
                      ) -> TrainOutputs:
        """`forward_train` after the prompt path (which a frozen prompt path lets a trainer cache)."""
        point_input = self.point_input(prompt, points, patches)
        coarse = self.coarse(prompt, point_input)
        if self.fine_inr.residual:  # Dec_f learns a correction; its loss does not move the coarse logit
            coarse.feature = torch.cat([coarse.feature[..., :-1], coarse.feature[..., -1:].detach()], dim=-1)
        coarse_logit = self.coarse_inr.dropout_logit(coarse.trunk, coarse.prior)
        with torch.no_grad():
            uncertainty = self.uncertainty(coarse, seed=int(torch.randint(0, 2**31 - 1, ()).item()))
        # A residual Dec_f is supervised on every point (a superset of where UGS applies it at inference,
        # which is a wider band on a large region than among the sampled points): it learns to leave right
        # answers alone. Otherwise, the paper's UGS: the top-K % most uncertain sampled points.
        points_n = points.shape[1]
        k = points_n if self.fine_inr.residual else refine_count(points_n, self.config.decoder.refine_fraction)
        top = uncertainty.topk(k, dim=1).indices.unsqueeze(-1)
        fine_logit = self.fine(
            point_input.gather(1, top.expand(-1, -1, point_input.shape[-1])),
            coarse.feature.gather(1, top.expand(-1, -1, coarse.feature.shape[-1])),
        )
        return TrainOutputs(coarse_logit, fine_logit, top.squeeze(-1))


def build_model(config: ModelConfig) -> IMedSAM:
    """Build an untrained network for a config (weights are loaded by `weights.load_model`)."""
    return IMedSAM(config)

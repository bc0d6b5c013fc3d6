"""Implicit decoder: positional encoding, coarse INR with MC-dropout, fine INR, UGS."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F


def positional_encoding(points: torch.Tensor, frequencies: int) -> torch.Tensor:
    """NeRF encoding of (..., 2) points in [-1, 1]: [p, sin(2^k pi p), cos(2^k pi p)], k < L."""
    scales = (2.0 ** torch.arange(frequencies, device=points.device, dtype=points.dtype)) * torch.pi
    angles = points.unsqueeze(-1) * scales  # (..., 2, L)
    encoded = torch.cat([angles.sin(), angles.cos()], dim=-1).flatten(-2)
    return torch.cat([points, encoded], dim=-1)


def squash_logit(logit: torch.Tensor) -> torch.Tensor:
    """A logit as a bounded MLP input (SAM's logits reach +-50): tanh(logit / 8)."""
    return torch.tanh(logit / 8.0)


def image_patches(image: torch.Tensor, points: torch.Tensor, size: int) -> torch.Tensor:
    """The k x k neighbourhood (k = `size`, odd) of each point in an image, one pixel apart.

    image (B, C, H, W) in [0, 1] at its own resolution; points (B, P, 2) xy in [-1, 1] (pixel centres
    at (2 i + 1) / n - 1, as `normalized_points` puts them) -> (B, P, C k^2), centred on 0.5.
    """
    height, width = image.shape[-2:]
    offsets = torch.arange(size, device=points.device, dtype=points.dtype) - (size - 1) / 2
    dy, dx = torch.meshgrid(offsets * 2.0 / height, offsets * 2.0 / width, indexing="ij")
    delta = torch.stack([dx.flatten(), dy.flatten()], dim=-1)  # (k^2, 2) xy
    grid = points.unsqueeze(2) + delta  # (B, P, k^2, 2)
    sampled = F.grid_sample(image.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
    return sampled.permute(0, 2, 1, 3).flatten(2) - 0.5  # (B, P, C k^2)


def _mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


@dataclass
class CoarseOutput:
    """Deterministic coarse pass: logit (..., ), feature z_c (..., Z) and the shared trunk (..., H).

    With a SAM prior, `prior` is SAM's logit at the points (added to every logit, MC passes included).
    """

    logit: torch.Tensor
    feature: torch.Tensor
    trunk: torch.Tensor
    prior: torch.Tensor | None = None


class CoarseINR(nn.Module):
    """Dec_c: [point input, prompt] -> hidden (1024, 512) -> (logit, z_c).

    The prompt feature is constant per box, so its first-layer product is a per-box bias
    (`prompt_proj`), computed once instead of once per point. Dropout sits only before the
    output layer: the T MC-dropout passes share the whole trunk and cost one small matmul.
    """

    def __init__(
        self, point_dim: int, prompt_dim: int, hidden: tuple[int, ...], feature_dim: int, dropout: float
    ) -> None:
        super().__init__()
        self.point_proj = nn.Linear(point_dim, hidden[0])
        self.prompt_proj = nn.Linear(prompt_dim, hidden[0], bias=False)
        self.trunk = nn.Sequential(nn.ReLU(inplace=True), *_trunk_layers(list(hidden)))
        self.head = nn.Linear(hidden[-1], 1 + feature_dim)
        self.dropout = dropout

    def prompt_bias(self, prompt: torch.Tensor) -> torch.Tensor:
        """(B, prompt_dim) -> (B, 1, hidden0): the per-box share of the first layer."""
        return self.prompt_proj(prompt).unsqueeze(1)

    def start_at_prior(self) -> None:
        """Zero the logit row of the head: with a prior added, the output starts exactly at the prior."""
        with torch.no_grad():
            self.head.weight[0].zero_()
            self.head.bias[0].zero_()

    def forward(self, point_input: torch.Tensor, prompt_bias: torch.Tensor,
                prior: torch.Tensor | None = None) -> CoarseOutput:
        """point_input (B, P, D), prompt_bias (B, 1, H0), prior (B, P) or None -> outputs (B, P, ...)."""
        trunk = self.trunk(self.point_proj(point_input) + prompt_bias)
        out = self.head(trunk)
        logit = out[..., 0] if prior is None else out[..., 0] + prior
        return CoarseOutput(logit=logit, feature=out[..., 1:], trunk=trunk, prior=prior)

    def dropout_logit(self, trunk: torch.Tensor, prior: torch.Tensor | None = None) -> torch.Tensor:
        """Logit with standard (per-element) dropout on the trunk: the training pass."""
        dropped = F.dropout(trunk, self.dropout, training=True)
        logit = F.linear(dropped, self.head.weight[:1], self.head.bias[:1])[..., 0]
        return logit if prior is None else logit + prior

    def mc_logits(self, trunk: torch.Tensor, keep_masks: torch.Tensor,
                  prior: torch.Tensor | None = None) -> torch.Tensor:
        """Logits of T thinned networks: trunk (B, P, H), keep_masks (T, H) -> (T, B, P).

        Each pass samples one thinned network (a unit mask shared by all points), so the T
        samples are spatially coherent and a point's uncertainty does not depend on which other
        points were queried: a box-region decode and a dense decode agree exactly.
        """
        weight = self.head.weight[0] / (1.0 - self.dropout)  # inverted-dropout scaling
        per_pass = keep_masks * weight  # (T, H)
        logits = torch.einsum("bph,th->tbp", trunk, per_pass) + self.head.bias[0]
        return logits if prior is None else logits + prior


def _trunk_layers(hidden: list[int]) -> list[nn.Module]:
    layers: list[nn.Module] = []
    for n_in, n_out in zip(hidden[:-1], hidden[1:]):
        layers += [nn.Linear(n_in, n_out), nn.ReLU(inplace=True)]
    return layers


class FineINR(nn.Module):
    """Dec_f: [point input, z_c] -> hidden (512, 256, 256, 128) -> logit.

    `residual`: the last column of `coarse_feature` is the coarse logit; Dec_f reads it (squashed) and
    outputs a correction to it from a zero-initialised last layer, so untrained refinement changes
    nothing and training only has to learn where the coarse answer is wrong.
    """

    def __init__(self, point_dim: int, feature_dim: int, hidden: tuple[int, ...], residual: bool = False) -> None:
        super().__init__()
        self.residual = residual
        self.mlp = _mlp([point_dim + feature_dim, *hidden, 1])
        if residual:
            nn.init.zeros_(self.mlp[-1].weight)
            nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, point_input: torch.Tensor, coarse_feature: torch.Tensor) -> torch.Tensor:
        if not self.residual:
            return self.mlp(torch.cat([point_input, coarse_feature], dim=-1))[..., 0]
        coarse_logit = coarse_feature[..., -1]
        inputs = torch.cat([point_input, coarse_feature[..., :-1], squash_logit(coarse_logit).unsqueeze(-1)], dim=-1)
        return coarse_logit + self.mlp(inputs)[..., 0]


def mc_keep_masks(passes: int, width: int, dropout: float, seed: int, device: torch.device) -> torch.Tensor:
    """T fixed unit-keep masks (T, width) from a seeded generator: reproducible MC-dropout."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    keep = torch.rand(passes, width, generator=generator) >= dropout
    return keep.to(device=device, dtype=torch.float32)


def mc_uncertainty(mc_logits: torch.Tensor, kind: str = "predictive") -> torch.Tensor:
    """Uncertainty from T MC-dropout passes (dim 0).

    "epistemic": the variance of the sigmoid probability over the passes (paper eq. 7).
    "predictive": the variance of the ensemble's Bernoulli prediction, p̄(1 - p̄), which is that
    variance plus the passes' mean p_t(1 - p_t) (law of total variance). It also flags points every
    pass agrees are near 0.5, and ranks wrong pixels better (see the README's model card).
    """
    probs = torch.sigmoid(mc_logits)
    if kind == "epistemic":
        return probs.var(dim=0, unbiased=False)
    if kind == "predictive":
        mean = probs.mean(dim=0)
        return mean * (1.0 - mean)
    raise ValueError(f"unknown uncertainty kind {kind!r}")


def refine_count(n_points: int, fraction: float) -> int:
    """How many points UGS sends to Dec_f: the top `fraction` of `n_points` (at least 1)."""
    return max(1, min(n_points, int(round(fraction * n_points))))

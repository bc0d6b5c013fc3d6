"""The Dual False Corrector (after SF-RecSAM, ECCV 2024): where the model is unsure, decide which
foreground to flip to background (false positives) and which background to flip to foreground
(false negatives).

It reads the decoded maps of one box region — the normalised image, the coarse and refined
probabilities, the MC-dropout uncertainty and the box itself — so it works on top of any backbone.
A small shared convolutional trunk feeds two heads: the false-positive corrector (a flip logit for
suspicious foreground) and the false-negative corrector (for suspicious background). Only
suspicious pixels (uncertainty above `threshold`, grown by a pixel) can change: everywhere else the
refined mask stands. Trained as a second stage with the segmentation network frozen
(`src_train/corrector.py`); saved as safetensors like the adapters.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

CHANNELS = 5  # image, coarse probability, refined probability, uncertainty / 0.25, inside-the-box


@dataclass(frozen=True)
class CorrectorConfig:
    width: int = 24
    depth: int = 4  # 3x3 convolutions in the trunk (dilations 1, 2, 4, 1, ...)
    threshold: float = 0.02  # predictive variance above which a pixel is suspicious
    size: int = 128  # the box region is resampled to size x size for the corrector

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Correction:
    """The corrector's answer on the decoded region (arrays of the region's shape)."""

    corrected: np.ndarray  # bool mask after both correctors
    remove: np.ndarray  # bool: refined foreground the false-positive corrector flips to background
    add: np.ndarray  # bool: refined background the false-negative corrector flips to foreground
    fp_prob: np.ndarray  # flip probability of suspicious foreground (0 elsewhere)
    fn_prob: np.ndarray  # flip probability of suspicious background (0 elsewhere)


class DualFalseCorrector(nn.Module):
    def __init__(self, config: CorrectorConfig = CorrectorConfig()) -> None:
        super().__init__()
        self.config = config
        layers: list[nn.Module] = []
        channels = CHANNELS
        for i in range(config.depth):
            dilation = (1, 2, 4)[i % 3] if i < config.depth - 1 else 1
            layers += [nn.Conv2d(channels, config.width, 3, padding=dilation, dilation=dilation), nn.GELU()]
            channels = config.width
        self.trunk = nn.Sequential(*layers)
        self.fp_head = nn.Conv2d(config.width, 1, 1)  # flip suspicious foreground to background
        self.fn_head = nn.Conv2d(config.width, 1, 1)  # flip suspicious background to foreground

    def forward(self, maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 5, S, S) stacked maps -> (fp flip logits, fn flip logits), each (B, S, S)."""
        features = self.trunk(maps)
        return self.fp_head(features)[:, 0], self.fn_head(features)[:, 0]


def stack_maps(image01: np.ndarray, coarse: np.ndarray, refined: np.ndarray, uncertainty: np.ndarray,
               box_mask: np.ndarray) -> np.ndarray:
    """The corrector's (5, H, W) float32 input from region-sized maps (grey image in [0, 1])."""
    return np.stack([image01, coarse, refined, np.clip(uncertainty / 0.25, 0.0, 1.0), box_mask]).astype(np.float32)


def suspicious(uncertainty: np.ndarray, threshold: float) -> np.ndarray:
    """Pixels whose uncertainty is above `threshold`, grown by one pixel (bool)."""
    flagged = torch.from_numpy(np.ascontiguousarray(uncertainty > threshold, dtype=np.float32))[None, None]
    return F.max_pool2d(flagged, 3, stride=1, padding=1)[0, 0].numpy() > 0


def resample(maps: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """(C, H, W) -> (1, C, h, w) bilinear, as a tensor."""
    return F.interpolate(torch.from_numpy(maps)[None], size=size, mode="bilinear", align_corners=False)


@torch.inference_mode()
def correct(corrector: DualFalseCorrector, maps: np.ndarray, uncertainty: np.ndarray) -> Correction:
    """Run both correctors on one region's stacked maps (from `stack_maps`)."""
    height, width = maps.shape[1:]
    size = corrector.config.size
    device = next(corrector.parameters()).device
    fp_logit, fn_logit = corrector(resample(maps, (size, size)).to(device))
    back = (height, width)
    fp = torch.sigmoid(F.interpolate(fp_logit[None], size=back, mode="bilinear", align_corners=False))[0, 0]
    fn = torch.sigmoid(F.interpolate(fn_logit[None], size=back, mode="bilinear", align_corners=False))[0, 0]
    refined = maps[2] > 0.5
    doubt = suspicious(uncertainty, corrector.config.threshold)
    fp_prob = np.where(doubt & refined, fp.cpu().numpy(), 0.0).astype(np.float32)
    fn_prob = np.where(doubt & ~refined, fn.cpu().numpy(), 0.0).astype(np.float32)
    remove, add = fp_prob > 0.5, fn_prob > 0.5
    return Correction((refined & ~remove) | add, remove, add, fp_prob, fn_prob)


def save_corrector(corrector: DualFalseCorrector, path, header: dict) -> object:
    """Write the corrector's tensors and a header (its config, the base model it corrects) atomically."""
    from .weights import atomic_save_safetensors

    return atomic_save_safetensors(corrector.state_dict(), path, {**header, "kind": "corrector",
                                                                  "corrector": corrector.config.to_dict()},
                                   overwrite=False)


def load_corrector(path, base_sha256: str | None = None) -> DualFalseCorrector:
    """A corrector file; refuses one trained on another base model (when both hashes are known)."""
    from ..errors import CheckpointError
    from .weights import read_safetensors

    tensors, header = read_safetensors(path)
    if header.get("kind") != "corrector" or not isinstance(header.get("corrector"), dict):
        raise CheckpointError(f"{path}: not a corrector file (no corrector header)")
    trained_on = header.get("base_sha256")
    if base_sha256 and trained_on and trained_on != base_sha256:
        raise CheckpointError(f"{path}: this corrector was trained on another base model "
                              f"(sha256 {trained_on[:12]}…, loaded {base_sha256[:12]}…)")
    try:
        config = CorrectorConfig(**header["corrector"])
        corrector = DualFalseCorrector(config)
        corrector.load_state_dict(tensors)
    except (TypeError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: corrector tensors do not match its header ({exc})") from None
    corrector.header = header  # what its training measured (`helps`, `metrics_before`, `metrics`)
    return corrector.eval().requires_grad_(False)


def bundled_corrector(model_name: str, base_sha256: str) -> DualFalseCorrector | None:
    """The corrector shipped for a registry model (`ModelSpec.corrector`), if any and if it matches."""
    from .catalog import bundled_companion

    path = bundled_companion(model_name, "corrector")
    return None if path is None else load_corrector(path, base_sha256=base_sha256)

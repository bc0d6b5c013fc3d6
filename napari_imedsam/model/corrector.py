"""The Dual False Corrector (after SF-RecSAM, ECCV 2024): where the model is unsure, decide which
foreground to flip to background (false positives) and which background to flip to foreground
(false negatives).

It reads the maps of one box region (the box grown by `margin` of its longer side plus `pad`
pixels, resampled to `size` x `size`): the normalised image, the refined probability, the MC-dropout
uncertainty and the box itself, so it works on top of any backbone. A small U-Net trunk (the one the
click refiner uses, `unet.py`) feeds two heads: the false-positive corrector (a flip logit for
foreground) and the false-negative corrector (for background). Only suspicious pixels (uncertainty
above `threshold`, grown by a pixel) can change: everywhere else the refined mask stands. The heads
start at "flip nothing". Trained as a second stage with the segmentation network frozen
(`src_train/corrector.py`); saved as safetensors with a JSON header, like the adapters.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .unet import MapUNet, load_second_stage, save_second_stage

CHANNELS = 6  # image (3), refined probability, uncertainty / 0.25, inside-the-box
ARCHITECTURE = "unet"  # files without it hold the first corrector (4 dilated convolutions): train again
NO_FLIP_LOGIT = -4.0  # the heads' starting bias: flip probability 0.018 everywhere


@dataclass(frozen=True)
class CorrectorConfig:
    size: int = 64  # the region is resampled to size x size
    widths: tuple[int, ...] = (16, 32, 48, 64)  # channels per U-Net level
    threshold: float = 0.02  # predictive variance above which a pixel is suspicious
    margin: float = 0.15  # the region: the box, grown by this fraction of its longer side ...
    pad: float = 6.0  # ... plus this many pixels
    architecture: str = ARCHITECTURE

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Correction:
    """The corrector's answer on the region (arrays of the region's shape)."""

    corrected: np.ndarray  # bool mask after both correctors
    remove: np.ndarray  # bool: refined foreground the false-positive corrector flips to background
    add: np.ndarray  # bool: refined background the false-negative corrector flips to foreground
    fp_prob: np.ndarray  # flip probability of suspicious foreground (0 elsewhere)
    fn_prob: np.ndarray  # flip probability of suspicious background (0 elsewhere)


class DualFalseCorrector(MapUNet):
    def __init__(self, config: CorrectorConfig = CorrectorConfig()) -> None:
        super().__init__(CHANNELS, 2, config.widths)
        self.config = config
        nn.init.zeros_(self.out.weight)  # untrained: no flips, the refined mask stands
        nn.init.constant_(self.out.bias, NO_FLIP_LOGIT)

    def forward(self, maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 6, S, S) stacked maps -> (fp flip logits, fn flip logits), each (B, S, S)."""
        logits = super().forward(maps)
        return logits[:, 0], logits[:, 1]


def stack_maps(image01: np.ndarray, refined: np.ndarray, uncertainty: np.ndarray, box_mask: np.ndarray) -> np.ndarray:
    """The corrector's (6, H, W) float32 input from region-sized maps (image (H, W, 3) or (H, W) in [0, 1])."""
    image01 = np.asarray(image01, dtype=np.float32)
    if image01.ndim == 2:
        image01 = np.repeat(image01[..., None], 3, axis=-1)
    return np.concatenate([np.moveaxis(image01[..., :3], -1, 0),
                           np.stack([refined, np.clip(uncertainty / 0.25, 0.0, 1.0), box_mask])]).astype(np.float32)


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
    refined = maps[3] > 0.5
    doubt = suspicious(uncertainty, corrector.config.threshold)
    fp_prob = np.where(doubt & refined, fp.cpu().numpy(), 0.0).astype(np.float32)
    fn_prob = np.where(doubt & ~refined, fn.cpu().numpy(), 0.0).astype(np.float32)
    remove, add = fp_prob > 0.5, fn_prob > 0.5
    return Correction((refined & ~remove) | add, remove, add, fp_prob, fn_prob)


def save_corrector(corrector: DualFalseCorrector, path, header: dict) -> object:
    """Write the corrector's tensors and a header (its config, the base model it corrects) atomically."""
    return save_second_stage(corrector, path, header, "corrector")


def load_corrector(path, base_sha256: str | None = None) -> DualFalseCorrector:
    """A corrector file; refuses one of the first corrector, and one trained on another base model (when
    both hashes are known)."""
    from ..errors import CheckpointError

    def check(header: dict) -> None:
        if header["corrector"].get("architecture") != ARCHITECTURE:
            raise CheckpointError(f"{path}: a corrector of an earlier napari-imedsam (before the U-Net trunk); "
                                  "train it again with imedsam train --mode corrector")
        trained_on = header.get("base_sha256")
        if base_sha256 and trained_on and trained_on != base_sha256:
            raise CheckpointError(f"{path}: this corrector was trained on another base model "
                                  f"(sha256 {trained_on[:12]}…, loaded {base_sha256[:12]}…)")

    return load_second_stage(path, "corrector", lambda settings: DualFalseCorrector(CorrectorConfig(**settings)),
                             check)


def bundled_corrector(model_name: str, base_sha256: str) -> DualFalseCorrector | None:
    """The corrector shipped for a registry model (`ModelSpec.corrector`), if any and if it matches."""
    from .catalog import bundled_companion

    path = bundled_companion(model_name, "corrector")
    return None if path is None else load_corrector(path, base_sha256=base_sha256)


def chosen_corrector(source: str, model_name: str, base_sha256: str) -> DualFalseCorrector:
    """A corrector file, or "bundled": the one shipped for registry model `model_name` (an error if none)."""
    if source != "bundled":
        return load_corrector(source, base_sha256=base_sha256)
    from ..errors import InputError

    corrector = bundled_corrector(model_name, base_sha256)
    if corrector is None:
        raise InputError(f"no corrector is bundled with {model_name!r}: give a corrector file "
                         "(imedsam train --mode corrector)")
    return corrector

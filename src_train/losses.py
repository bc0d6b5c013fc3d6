"""0.5 BCE + 0.5 Dice on point logits, for the coarse and the fine INR."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from napari_imedsam.model.imedsam import TrainOutputs


def dice_loss(logits: torch.Tensor, targets: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Soft Dice over the last axis (points), averaged over the batch."""
    probs = torch.sigmoid(logits)
    intersection = (probs * targets).sum(-1)
    total = probs.sum(-1) + targets.sum(-1)
    return (1.0 - (2.0 * intersection + eps) / (total + eps)).mean()


def bce_dice_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """0.5 BCE-with-logits + 0.5 soft Dice (the reference's single-channel CE was identically 0)."""
    targets = targets.to(logits.dtype)
    return 0.5 * F.binary_cross_entropy_with_logits(logits, targets) + 0.5 * dice_loss(logits, targets)


def coarse_fine_weights(progress: float) -> tuple[float, float]:
    """Supervision moves from the coarse to the fine INR: (0.8, 0.2) at the start -> (0.2, 0.8) at the end."""
    progress = min(max(progress, 0.0), 1.0)
    return 0.8 - 0.6 * progress, 0.2 + 0.6 * progress


def imedsam_loss(outputs: TrainOutputs, targets: torch.Tensor, progress: float,
                 fine_only: bool = False) -> torch.Tensor:
    """Weighted coarse + fine loss; the fine INR is supervised at the points UGS selected."""
    fine_targets = targets.gather(1, outputs.fine_index)
    if fine_only:
        return bce_dice_loss(outputs.fine_logit, fine_targets)
    w_coarse, w_fine = coarse_fine_weights(progress)
    return w_coarse * bce_dice_loss(outputs.coarse_logit, targets) + w_fine * bce_dice_loss(
        outputs.fine_logit, fine_targets
    )

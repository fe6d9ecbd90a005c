"""Segmentation losses (nnU-Net's Dice + cross-entropy, with deep supervision).

Target voxels of value UNKNOWN_LABEL (not annotated: sparse annotations, covlight.data.sparse) take no part, as
with nnU-Net v2's ignore label: the cross-entropy is averaged over the annotated voxels only, and the soft Dice
counts predictions and targets on annotated voxels only; a batch without an annotated voxel gives a zero loss with
no gradient.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from covlight.benchmark import UNKNOWN_LABEL


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1e-5) -> torch.Tensor:
    """1 - mean soft Dice over the foreground classes, pooled over the batch ("batch Dice", as nnU-Net), over the
    annotated voxels only."""
    probabilities = logits.softmax(1)
    known = target != UNKNOWN_LABEL
    one_hot = F.one_hot(torch.where(known, target, 0), logits.shape[1]).movedim(-1, 1).to(probabilities.dtype)
    if not known.all():
        mask = known[:, None].to(probabilities.dtype)
        probabilities, one_hot = probabilities * mask, one_hot * mask
    axes = (0, *range(2, logits.ndim))
    intersection = (probabilities * one_hot).sum(axes)
    denominator = probabilities.sum(axes) + one_hot.sum(axes)
    dice = (2 * intersection + smooth) / (denominator + smooth).clamp_min(1e-8)
    return 1 - dice[1:].mean()


def masked_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy averaged over the annotated voxels (0 when there is none, not NaN)."""
    per_voxel = F.cross_entropy(logits, target, ignore_index=UNKNOWN_LABEL, reduction="none")
    return per_voxel.sum() / (target != UNKNOWN_LABEL).sum().clamp_min(1)


class DiceCELoss(nn.Module):
    """Dice + cross-entropy on class-index targets of shape (B, *spatial)."""

    def __init__(self, dice_weight: float = 1.0, ce_weight: float = 1.0):
        super().__init__()
        self.dice_weight = dice_weight
        self.ce_weight = ce_weight

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        loss = self.ce_weight * masked_cross_entropy(logits, target)
        if self.dice_weight:
            loss = loss + self.dice_weight * soft_dice_loss(logits, target)
        return loss


def deep_supervision_weights(levels: int) -> list[float]:
    """nnU-Net's weights: 1/2^i per level, the lowest resolution dropped, normalised to sum to 1."""
    weights = [0.5**i for i in range(levels)]
    if levels > 1:
        weights[-1] = 0.0
    total = sum(weights)
    return [w / total for w in weights]


def deep_supervision_loss(loss: nn.Module, outputs: Sequence[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
    """Sum of weighted losses; the target is downsampled (nearest) to each output's resolution.

    A zero-weight level is still computed, so every head takes part in the graph (DDP requires it).
    """
    weights = deep_supervision_weights(len(outputs))
    total = outputs[0].new_zeros(())
    for weight, output in zip(weights, outputs, strict=True):
        scaled = target
        if output.shape[2:] != target.shape[1:]:
            scaled = F.interpolate(target[:, None].float(), size=output.shape[2:], mode="nearest")[:, 0].long()
        total = total + weight * loss(output, scaled)
    return total

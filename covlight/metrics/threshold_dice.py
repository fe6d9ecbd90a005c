"""The threshold-averaged Dice of the COVID-SemiSeg papers (Inf-Net, Semi-Inf-Net), for comparing with them.

Per image: the foreground probability, resized to the mask's size (bilinear), min-max normalised, binarised at
each of the 256 thresholds t = 0, 1/255, ..., 1 as `p >= t`; the Dice at each threshold is 0 when there is no true
positive. The score is the mean over images at each threshold, then the mean over thresholds. The benchmark's own
DSC (covlight.metrics.dice) scores a hard label map instead; this one rewards a well-ranked probability map.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

# The papers' grid t = 1, 1 - 1/255, ..., 0 (MATLAB's 1:-1/255:0) as numpy spells it, ascending: a pixel that lies
# exactly on a threshold is compared with the very same float64.
THRESHOLDS = np.linspace(1.0, 0.0, 256)[::-1].copy()


def dice_per_threshold(probability, mask) -> torch.Tensor:
    """The Dice of one image at each of the 256 thresholds (float64, ascending thresholds), on the inputs' device.

    `probability`: 2D foreground probabilities, any size (resized to `mask`'s with bilinear interpolation);
    `mask`: 2D truth, nonzero = foreground. Counts come from one pass: each pixel is counted at every threshold up
    to the highest it reaches, so a threshold comparison is made exactly once per pixel.
    """
    p = torch.as_tensor(probability, dtype=torch.float64)
    g = torch.as_tensor(mask, device=p.device) != 0
    if p.ndim != 2 or g.ndim != 2:
        raise ValueError(f"threshold-averaged Dice scores 2D images, got {tuple(p.shape)} and {tuple(g.shape)}")
    if p.shape != g.shape:
        p = F.interpolate(p[None, None], size=tuple(g.shape), mode="bilinear", align_corners=False)[0, 0]
    low, high = p.min(), p.max()
    p = (p - low) / (high - low) if high > low else torch.zeros_like(p)
    thresholds = torch.as_tensor(THRESHOLDS, device=p.device)
    # highest threshold index each pixel reaches (p >= t); min-max normalised, every pixel reaches t = 0
    reached = torch.searchsorted(thresholds, p.reshape(-1), right=True) - 1
    predicted = _at_or_above(reached, len(thresholds))
    true_positive = _at_or_above(reached[g.reshape(-1)], len(thresholds))
    dice = 2 * true_positive / (predicted + g.sum()).clamp(min=1)
    return torch.where(true_positive > 0, dice, torch.zeros_like(dice))


def _at_or_above(reached: torch.Tensor, n: int) -> torch.Tensor:
    """How many pixels reach at least each threshold, from each pixel's highest threshold index."""
    counts = torch.bincount(reached, minlength=n).to(torch.float64)
    return counts.flip(0).cumsum(0).flip(0)


def threshold_averaged_dice(probabilities, masks) -> float:
    """The papers' score of a set of images: the mean over images at each threshold, then over thresholds."""
    if len(probabilities) != len(masks) or not len(masks):
        raise ValueError(f"need as many probability maps as masks (> 0), got {len(probabilities)} and {len(masks)}")
    per_image = torch.stack([dice_per_threshold(p, m) for p, m in zip(probabilities, masks, strict=True)])
    return float(per_image.mean(0).mean())

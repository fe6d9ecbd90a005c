"""Volume overlap: the Dice similarity coefficient."""

from __future__ import annotations

import math

from covlight.metrics.backend import ops_for
from covlight.metrics.masks import as_masks


def dice(pred, gt) -> float:
    """Dice similarity coefficient 2|P∩G| / (|P| + |G|): NaN when both masks are empty, 0 when one is.

    Exact integer counts, as `surface-distance`'s `compute_dice_coefficient`; on the masks' device.
    """
    pred, gt = as_masks(pred, gt)
    ops = ops_for(gt)
    total = ops.count(pred) + ops.count(gt)
    if total == 0:
        return math.nan
    return 2 * count_both(pred, gt) / total


def count_both(first, second, rows: int = 16) -> int:
    """Voxels set in both masks, counted a slab at a time (no volume-sized temporary)."""
    ops = ops_for(first)
    return sum(ops.count(first[i:i + rows] & second[i:i + rows]) for i in range(0, first.shape[0], rows))

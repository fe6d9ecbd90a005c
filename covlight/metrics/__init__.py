"""Segmentation metrics as pure functions on numpy arrays or torch tensors (any device), 2D or 3D.

DSC and NSD are the benchmark's (DeepMind's `surface-distance` surfel method, `<=` tolerance); HD95 and ASSD are
medpy's. Spacing is always in the array's axis order (mm). Empty masks: DSC and NSD are NaN when both masks are
empty and 0 when one is; HD95 and ASSD are NaN when both are empty and inf when one is. The structures and their
columns are the benchmark's facts (covlight.benchmark); per-case result tables are in covlight.metrics.results.
Torch is imported only where a tensor is scored: scoring numpy arrays never loads it.
"""

from covlight.metrics.distances import assd, hd95
from covlight.metrics.overlap import dice
from covlight.metrics.structures import score_case
from covlight.metrics.surface_dice import normalized_surface_dice

__all__ = ["assd", "dice", "hd95", "normalized_surface_dice", "score_case"]

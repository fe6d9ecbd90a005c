"""Segmentation metrics as pure functions on numpy arrays or torch tensors (any device), 2D or 3D.

DSC and NSD are the benchmark's (DeepMind's `surface-distance` surfel method, `<=` tolerance); HD95 and ASSD are
medpy's. Spacing is always in the array's axis order (mm). Empty masks: DSC and NSD are NaN when both masks are
empty and 0 when one is; HD95 and ASSD are NaN when both are empty and inf when one is.
"""

from covlight.metrics.distances import assd, hd95
from covlight.metrics.overlap import dice
from covlight.metrics.structures import STRUCTURES, Structure, columns, score_case
from covlight.metrics.surface_dice import normalized_surface_dice

__all__ = ["STRUCTURES", "Structure", "assd", "columns", "dice", "hd95", "normalized_surface_dice", "score_case"]

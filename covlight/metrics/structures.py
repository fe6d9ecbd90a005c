"""Scoring one case's label maps with the benchmark's structures (covlight.benchmark.STRUCTURES)."""

from __future__ import annotations

from covlight.benchmark import BENCHMARK_METRICS, STRUCTURES, ordered_structures
from covlight.metrics.distances import assd, hd95
from covlight.metrics.overlap import dice
from covlight.metrics.surface_dice import normalized_surface_dice

# metric -> score(pred mask, gt mask, spacing_mm, structure)
SCORERS = {
    "dsc": lambda pred, gt, spacing, structure: dice(pred, gt),
    "nsd": lambda pred, gt, spacing, structure: normalized_surface_dice(pred, gt, spacing, structure.tolerance_mm),
    "hd95": lambda pred, gt, spacing, structure: hd95(pred, gt, spacing),
    "assd": lambda pred, gt, spacing, structure: assd(pred, gt, spacing),
}


def score_case(pred_labels, gt_labels, spacing_mm, structures=("left_lung", "right_lung", "infection"), *,
               labels=None, metrics=BENCHMARK_METRICS) -> dict[str, float]:
    """The `metrics` (default DSC and NSD) of each requested structure: `{column: value}` in the benchmark's
    column order (`covlight.benchmark.columns`).

    `pred_labels` and `gt_labels` are label maps (numpy arrays, or torch tensors scored on their device) with
    canonical values (0 background, 1 left lung, 2 right lung, 3 infection); `labels` maps a structure name to
    another value where a format differs (the benchmark's infection-only files use 1). Empty structures follow
    the rules of each metric (DSC, NSD: NaN when absent from both, 0 when absent from one; HD95, ASSD: NaN and
    inf).
    """
    if tuple(pred_labels.shape) != tuple(gt_labels.shape):
        raise ValueError(f"prediction shape {tuple(pred_labels.shape)} differs from ground truth shape "
                         f"{tuple(gt_labels.shape)}")
    row = {}
    for name in ordered_structures(structures):
        structure = STRUCTURES[name]
        label = (labels or {}).get(name, structure.label)
        pred, gt = pred_labels == label, gt_labels == label
        for metric in metrics:
            row[structure.column(metric)] = SCORERS[metric](pred, gt, spacing_mm, structure)
    return row

"""The structures the benchmark scores, and scoring one case's label maps."""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType

from covlight.metrics.overlap import dice
from covlight.metrics.surface_dice import normalized_surface_dice


@dataclass(frozen=True)
class Structure:
    """A scored structure: its canonical label, NSD tolerance and the benchmark's CSV column names."""

    label: int
    tolerance_mm: float
    dsc_column: str
    nsd_column: str


# In the benchmark's column order (its evaluation script's CSV).
STRUCTURES = MappingProxyType({
    "left_lung": Structure(label=1, tolerance_mm=1.0, dsc_column="L-lungDSC", nsd_column="L-lung-1mm"),
    "right_lung": Structure(label=2, tolerance_mm=1.0, dsc_column="R-lungDSC", nsd_column="R-lung-1mm"),
    "infection": Structure(label=3, tolerance_mm=3.0, dsc_column="LesionDSC", nsd_column="LesionNSD-3mm"),
})


def ordered_structures(names) -> list[str]:
    """`names` checked and put in the benchmark's column order."""
    names = [names] if isinstance(names, str) else list(names)
    unknown = [name for name in names if name not in STRUCTURES]
    if unknown:
        raise ValueError(f"unknown structure(s) {unknown}; known: {list(STRUCTURES)}")
    return [name for name in STRUCTURES if name in names]


def columns(names) -> list[str]:
    """The CSV columns of the given structures, in the benchmark's order."""
    return [column for name in ordered_structures(names)
            for column in (STRUCTURES[name].dsc_column, STRUCTURES[name].nsd_column)]


def score_case(pred_labels, gt_labels, spacing_mm, structures=("left_lung", "right_lung", "infection"), *,
               labels=None) -> dict[str, float]:
    """DSC and NSD of each requested structure: `{column: value}` in the benchmark's column order.

    `pred_labels` and `gt_labels` are label maps (numpy arrays, or torch tensors scored on their device) with
    canonical values (0 background, 1 left lung, 2 right lung, 3 infection); `labels` maps a structure name to
    another value where a format differs (the benchmark's infection-only files use 1). Empty structures follow
    the rules of `dice` and `normalized_surface_dice` (NaN when absent from both, 0 when absent from one).
    """
    if tuple(pred_labels.shape) != tuple(gt_labels.shape):
        raise ValueError(f"prediction shape {tuple(pred_labels.shape)} differs from ground truth shape "
                         f"{tuple(gt_labels.shape)}")
    row = {}
    for name in ordered_structures(structures):
        structure = STRUCTURES[name]
        label = (labels or {}).get(name, structure.label)
        pred, gt = pred_labels == label, gt_labels == label
        row[structure.dsc_column] = dice(pred, gt)
        row[structure.nsd_column] = normalized_surface_dice(pred, gt, spacing_mm, structure.tolerance_mm)
    return row

"""From a source image and its mapped label to a canonical case: RAS+, 0..255, anatomy checked."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from covlight.data.importers.checks import check_lungs_over_air, check_sides, split_lungs, to_0_255
from covlight.data.importers.volumes import Volume, canonical


@dataclass
class Prepared:
    """One case ready to write: canonical arrays, their affine, the source's intensity kind, per-case notes."""

    image: np.ndarray  # float32 0..255, RAS+
    label: np.ndarray | None  # uint8 canonical values, RAS+
    affine: np.ndarray
    intensity: str
    notes: dict = field(default_factory=dict)


def finish_case(image: Volume, kind: str, label: Volume | None = None, split: bool = False, fix: str = "",
                notes: dict | None = None) -> Prepared:
    """`image` as read; `label` already mapped to canonical values and on the image's grid (checked by the
    importer). Reorients both to RAS+, windows the image, optionally splits both-lungs masks into left and right,
    and checks the sides and that the lungs lie over air (for CT intensities)."""
    image = canonical(image)
    stored = to_0_255(image, kind)
    notes = dict(notes or {})
    if label is None:
        return Prepared(stored, None, image.affine, kind, notes)
    values = canonical(Volume(label.array, label.affine, label.name)).array.astype(np.uint8)
    single_slice = values.shape[2] == 1
    if split:
        values = split_lungs(values, image.affine, single_slice, label.name)
        notes["left_right"] = "derived"
    check_sides(values, image.affine, label.name, both=not single_slice, fix=fix)
    if kind in ("hu", "window_0_255"):
        check_lungs_over_air(values, stored, label.name, image.name)
    return Prepared(stored, values, image.affine, kind, notes)

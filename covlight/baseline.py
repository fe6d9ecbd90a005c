"""The trivial baseline the demo compares against: intensity thresholds and a midline split, no learning.

Lungs: air-like voxels (< -400 HU), minus the air outside the body (components touching the in-plane border of
the volume), keeping the two largest components above a minimum volume, with holes filled slice by slice;
left is the low-x half of the volume, right the high-x half. Infection: voxels of that lung mask in the
band -750..-100 HU. It is honest but blind to anatomy: it counts the trachea and bronchi as lung when they
touch it, splits at the volume's centre rather than between the lungs, takes blurred vessel borders and dense
dependent lung for infection, and misses consolidation at the pleura.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from covlight.data.canonical import hu_to_0_255

AIR_BELOW_HU = -400.0
INFECTION_HU = (-750.0, -100.0)
MIN_LUNG_ML = 50.0
# In-plane connectivity only: holes are filled slice by slice.
_IN_PLANE = np.zeros((3, 3, 3), bool)
_IN_PLANE[:, :, 1] = ndimage.generate_binary_structure(2, 1)


def _units(hu: float) -> float:
    """An HU value in the canonical images' 0..255 units."""
    return float(hu_to_0_255(np.float32(hu)))


def threshold_baseline(image_0_255: np.ndarray, spacing) -> np.ndarray:
    """Canonical labels (0 bg, 1 left lung, 2 right lung, 3 infection) for a canonical 0..255 image (x, y, z)."""
    image = np.asarray(image_0_255, dtype=np.float32)
    components, count = ndimage.label(image < _units(AIR_BELOW_HU))
    sizes = np.bincount(components.ravel(), minlength=count + 1)
    sizes[0] = 0
    outside = np.unique(np.concatenate([components[[0, -1]].ravel(), components[:, [0, -1]].ravel()]))
    sizes[outside] = 0
    voxel_ml = float(np.prod(spacing)) / 1000.0
    keep = [c for c in np.argsort(sizes)[::-1][:2] if sizes[c] * voxel_ml >= MIN_LUNG_ML]
    lungs = ndimage.binary_fill_holes(np.isin(components, keep), structure=_IN_PLANE)

    label = np.zeros(image.shape, np.uint8)
    left = np.arange(image.shape[0])[:, None, None] < image.shape[0] / 2
    label[lungs & left] = 1
    label[lungs & ~left] = 2
    low, high = (_units(hu) for hu in INFECTION_HU)
    label[lungs & (image >= low) & (image <= high)] = 3
    return label

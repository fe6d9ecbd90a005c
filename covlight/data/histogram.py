"""Histogram standardisation (Nyúl, Udupa & Zhang 2000): map every scan's intensity landmarks onto one standard
scale learnt from the training scans, so scanners and reconstruction kernels that shift or stretch the histogram
look alike. A deterministic preprocessing step (train, validation, test and `covlight.predict` alike), unlike the
random histogram warping of the augmentation preset.

Landmarks are percentiles of the voxels above the scan's mean (the body, not the air around it), in the stored
0..255 range. Learning: each training scan's landmarks are mapped linearly so its lowest and highest land on 0 and
255, then averaged. Applying: piecewise linear from the scan's own landmarks to the standard ones, extended
linearly beyond them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch
import torchio as tio

PERCENTILES = (1, 10, 20, 30, 40, 50, 60, 70, 80, 90, 99)
STANDARD_RANGE = (0.0, 255.0)


def landmarks_of(image: np.ndarray | torch.Tensor) -> np.ndarray:
    """The percentiles (PERCENTILES) of the voxels above the image's mean."""
    values = np.asarray(image, dtype=np.float32).ravel()
    foreground = values[values > values.mean()]
    if foreground.size < len(PERCENTILES):
        foreground = values
    return np.percentile(foreground, PERCENTILES)


def learn_standard_landmarks(images: Iterable[np.ndarray]) -> list[float]:
    """The standard scale: each image's landmarks stretched to STANDARD_RANGE, averaged over the images."""
    low, high = STANDARD_RANGE
    stretched = []
    for image in images:
        marks = landmarks_of(image)
        span = max(float(marks[-1] - marks[0]), 1e-6)
        stretched.append(low + (marks - marks[0]) / span * (high - low))
    if not stretched:
        raise ValueError("histogram standardisation needs at least one training image")
    return [float(v) for v in np.mean(stretched, axis=0)]


def standardise(image: torch.Tensor, standard: Sequence[float]) -> torch.Tensor:
    """`image` mapped piecewise linearly from its own landmarks onto `standard` (linear beyond the ends)."""
    source = torch.as_tensor(landmarks_of(image), dtype=torch.float64)
    target = torch.as_tensor(standard, dtype=torch.float64)
    source = source + torch.arange(len(source), dtype=torch.float64) * 1e-6  # strictly increasing for the search
    values = image.to(torch.float64)
    segment = (torch.searchsorted(source, values.reshape(-1)).reshape(values.shape) - 1).clamp(0, len(source) - 2)
    x0, x1, y0, y1 = source[segment], source[segment + 1], target[segment], target[segment + 1]
    return (y0 + (values - x0) * (y1 - y0) / (x1 - x0)).to(image.dtype if image.is_floating_point() else torch.float32)


class HistogramStandardisation(tio.Transform):
    """Standardise the subject's image onto learnt landmarks (before ScaleIntensity: both in the 0..255 range)."""

    def __init__(self, standard: Sequence[float], **kwargs):
        super().__init__(**kwargs)
        self.standard = [float(v) for v in standard]

    def apply_transform(self, subject: tio.Subject) -> tio.Subject:
        image = subject["image"]
        image.set_data(standardise(image.data.float(), self.standard))
        return subject

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
    """`image` (as float32) mapped piecewise linearly from its own landmarks onto `standard`, linear beyond the ends.

    Written as the first segment's line plus a ramp at each inner landmark where the slope changes, so a CT-sized
    volume needs one temporary of its size, not an index and four gathered copies.
    """
    source = landmarks_of(image) + np.arange(len(PERCENTILES)) * 1e-6  # strictly increasing: no zero-width segment
    target = np.asarray(standard, dtype=np.float64)
    slopes = np.diff(target) / np.diff(source)
    values = image.float()
    result = (values - float(source[0])) * float(slopes[0]) + float(target[0])
    for landmark, change in zip(source[1:-1], np.diff(slopes), strict=True):
        result.add_((values - float(landmark)).clamp_(min=0), alpha=float(change))
    return result


class HistogramStandardisation(tio.Transform):
    """Standardise the subject's image onto learnt landmarks (before ScaleIntensity: both in the 0..255 range)."""

    def __init__(self, standard: Sequence[float], **kwargs):
        super().__init__(**kwargs)
        self.standard = [float(v) for v in standard]

    def apply_transform(self, subject: tio.Subject) -> tio.Subject:
        image = subject["image"]
        image.set_data(standardise(image.data.float(), self.standard))
        return subject

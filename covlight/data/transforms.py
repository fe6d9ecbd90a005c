"""TorchIO transforms covlight adds: case checks, label-to-class mapping, padding, and the augmentation preset."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torchio as tio

from covlight.data.canonical import INTENSITY_KINDS, LABELS
from covlight.errors import ConfigError, DatasetError

# Stored images are 0..255 whatever the source kind (docs/ARCHITECTURE.md); this is the range each kind is scaled from.
STORED_RANGE = {kind: (0.0, 255.0) for kind in INTENSITY_KINDS}


INTENSITY_SCALINGS = ("range", "zscore")
SLICE_POLICIES = ("pad", "resize")


class ScaleIntensity(tio.Transform):
    """Scale the stored image for the net, by its case's intensity kind (from dataset.json, never guessed).

    "range": the kind's stored range (0..255) to [0, 1]. "zscore": zero mean, unit variance per image (for slice
    sets whose pictures differ in brightness and contrast; the kind is still checked).
    """

    def __init__(self, scaling: str = "range", **kwargs):
        super().__init__(**kwargs)
        if scaling not in INTENSITY_SCALINGS:
            raise ConfigError(f"data.intensity_scaling={scaling!r}: use one of {INTENSITY_SCALINGS}")
        self.scaling = scaling

    def apply_transform(self, subject: tio.Subject) -> tio.Subject:
        kind = subject["intensity"]
        if kind not in STORED_RANGE:
            raise DatasetError(
                f"{subject['image'].path}: unknown intensity kind {kind!r} in dataset.json; expected one of "
                f"{INTENSITY_KINDS}. Re-import the dataset."
            )
        image = subject["image"]
        data = image.data.float()
        if self.scaling == "zscore":
            image.set_data((data - data.mean()) / data.std().clamp_min(1e-6))
        else:
            low, high = STORED_RANGE[kind]
            image.set_data(((data - low) / (high - low)).clamp_(0.0, 1.0))
        return subject


class ResizeSlice(tio.Transform):
    """Resize a one-slice case (a 2D picture) to `size` in-plane: image linear, label nearest. Volumes pass as
    they are. The field of view is kept, so a prediction interpolated back to the original shape lands in place."""

    def __init__(self, size: Sequence[int], **kwargs):
        super().__init__(**kwargs)
        self.size = (int(size[0]), int(size[1]), 1)

    def apply_transform(self, subject: tio.Subject) -> tio.Subject:
        shape = tuple(subject.spatial_shape)
        if shape[2] != 1 or shape == self.size:
            return subject
        return tio.Resize(self.size)(subject)


class CheckCase(tio.Transform):
    """Reject a case with non-finite voxels or label values outside the canonical set, naming the file."""

    def apply_transform(self, subject: tio.Subject) -> tio.Subject:
        image = subject["image"]
        if not torch.isfinite(image.data).all():
            raise DatasetError(f"{image.path}: image has NaN or infinite voxels. Repair the source scan, delete this "
                               "file and re-run the import of this dataset.")
        if "label" in subject:
            label = subject["label"]
            values = set(torch.unique(label.data).tolist())
            unexpected = sorted(values - set(LABELS.values()))
            if unexpected:
                raise DatasetError(
                    f"{label.path}: unexpected label values {unexpected}; canonical labels are "
                    f"{LABELS}. Re-import with the right label mapping."
                )
        return subject


class ToClassIndices(tio.Transform):
    """Map canonical label values to the subtask's class indices (values the subtask ignores become 0)."""

    def __init__(self, label_values: Sequence[int], **kwargs):
        super().__init__(**kwargs)
        self.label_values = list(label_values)
        lut = torch.zeros(max(LABELS.values()) + 1, dtype=torch.int64)
        for index, value in enumerate(self.label_values):
            lut[value] = index
        self.lut = lut

    def apply_transform(self, subject: tio.Subject) -> tio.Subject:
        if "label" in subject:
            label = subject["label"]
            label.set_data(self.lut[label.data.long()].to(torch.uint8))
        return subject


class PadToAtLeast(tio.Transform):
    """Pad (image with its minimum, label with 0) so every spatial size is at least `size`."""

    def __init__(self, size: Sequence[int], **kwargs):
        super().__init__(**kwargs)
        self.size = np.asarray(size, dtype=int)

    def apply_transform(self, subject: tio.Subject) -> tio.Subject:
        missing = np.maximum(self.size - np.asarray(subject.spatial_shape), 0)
        if not missing.any():
            return subject
        before = missing // 2
        after = missing - before
        padding = [int(v) for pair in zip(before, after, strict=True) for v in pair]
        for image in subject.get_images(intensity_only=False):
            fill = 0 if isinstance(image, tio.LabelMap) else float(image.data.min())
            image.set_data(torch.nn.functional.pad(image.data, _torch_pad(padding), value=fill))
        return subject


def _torch_pad(padding: list[int]) -> list[int]:
    """TorchIO order (x0, x1, y0, y1, z0, z1) -> torch.nn.functional.pad order (last axis first)."""
    return padding[4:6] + padding[2:4] + padding[0:2]


class RandomContrast(tio.Transform):
    """nnU-Net's contrast augmentation: scale each image's deviation from its mean by a factor drawn from
    `factor_range`, then clip to the image's original range."""

    def __init__(self, factor_range: Sequence[float] = (0.75, 1.25), **kwargs):
        super().__init__(**kwargs)
        self.factor_range = tuple(factor_range)

    def apply_transform(self, subject: tio.Subject) -> tio.Subject:
        for image in subject.get_images(intensity_only=True):
            data = image.data.float()
            factor = torch.empty(()).uniform_(*self.factor_range)
            mean = data.mean()
            image.set_data(((data - mean) * factor + mean).clamp(data.min(), data.max()))
        return subject


class RandomHistogramWarp(tio.Transform):
    """Histogram augmentation: a random monotone piecewise-linear remapping between the image's deciles (each gap
    between consecutive deciles scaled by exp(U(-strength, strength)), the overall range kept), so intensity
    histograms vary as between scanners and reconstructions."""

    def __init__(self, strength: float = 0.5, **kwargs):
        super().__init__(**kwargs)
        self.strength = strength

    def apply_transform(self, subject: tio.Subject) -> tio.Subject:
        for image in subject.get_images(intensity_only=True):
            data = image.data.float()
            source = torch.quantile(data.flatten(), torch.linspace(0, 1, 11))
            gaps = source.diff() * torch.empty(10).uniform_(-self.strength, self.strength).exp()
            scale = (source[-1] - source[0]) / gaps.sum().clamp_min(1e-8)
            target = source[0] + torch.cat([torch.zeros(1), gaps.cumsum(0)]) * scale
            image.set_data(torch.from_numpy(np.interp(data.numpy(), source.numpy(), target.numpy())).float())
        return subject


def augmentation_preset(
    spatial_dims: int,
    affine_probability: float = 0.2,
    scales: Sequence[float] = (0.85, 1.25),
    degrees: float = 15,
    gamma_probability: float = 0.3,
    log_gamma: Sequence[float] = (-0.3, 0.3),
    noise_probability: float = 0.15,
    noise_std: Sequence[float] = (0.0, 0.05),
    blur_probability: float = 0.2,
    blur_std: Sequence[float] = (0.5, 1.0),
    low_resolution_probability: float = 0.15,
    low_resolution_factor: Sequence[float] = (1.0, 2.0),
    flip_axes: Sequence[int] = (),
    bias_field_probability: float = 0.0,
    bias_field_coefficients: float = 0.2,
    contrast_probability: float = 0.0,
    contrast_range: Sequence[float] = (0.75, 1.25),
    histogram_probability: float = 0.0,
    histogram_strength: float = 0.5,
) -> tio.Compose:
    """The nnU-Net-spirit preset: affine, gamma, noise, blur, simulated low resolution (and flips if asked).

    Off by default, for intensity domain generalisation: bias field, contrast and histogram augmentation
    (added only when asked, so the default preset draws exactly the same random numbers as before).

    Rotations are in-plane for 2D models and mostly in-plane for 3D (slices are usually much thicker).
    """
    if spatial_dims == 2:
        rotation = (0, 0, 0, 0, -degrees, degrees)
        low_resolution_axes = (0, 1)
    else:
        small = degrees / 3
        rotation = (-small, small, -small, small, -degrees, degrees)
        low_resolution_axes = (0, 1, 2)
    transforms = [
        tio.RandomAffine(scales=tuple(scales), degrees=rotation, default_pad_value="minimum",
                         p=affine_probability),
        tio.RandomAnisotropy(axes=low_resolution_axes, downsampling=tuple(low_resolution_factor),
                             p=low_resolution_probability),
        tio.RandomBlur(std=tuple(blur_std), p=blur_probability),
        tio.RandomNoise(std=tuple(noise_std), p=noise_probability),
        tio.RandomGamma(log_gamma=tuple(log_gamma), p=gamma_probability),
    ]
    if flip_axes:
        transforms.insert(0, tio.RandomFlip(axes=tuple(flip_axes), flip_probability=0.5))
    if bias_field_probability:
        transforms.append(tio.RandomBiasField(coefficients=bias_field_coefficients, p=bias_field_probability))
    if contrast_probability:
        transforms.append(RandomContrast(contrast_range, p=contrast_probability))
    if histogram_probability:
        transforms.append(RandomHistogramWarp(histogram_strength, p=histogram_probability))
    return tio.Compose(transforms)

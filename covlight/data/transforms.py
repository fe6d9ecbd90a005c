"""TorchIO transforms covlight adds (case checks, intensity scaling, slice resizing, contrast and histogram
augmentation), TorchIO's own label remapping and padding as covlight uses them, and the augmentation preset.

Spatial augmentation is done as nnU-Net does it: for a patch that gets the affine augmentation the sampler draws a
patch large enough for the largest rotation and scaling the preset can draw (`AffineRange.drawn_size`), and the
affine resamples only its centre, of the patch size (`RandomAffineCrop`), so a rotated or down-scaled patch holds
no padding except where the case itself ends."""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
import torch
import torchio as tio
from torchio.transforms.augmentation import RandomTransform

from covlight.benchmark import LABELS, UNKNOWN_LABEL
from covlight.data.canonical import INTENSITY_KINDS
from covlight.data.options import INTENSITY_SCALINGS, Augmentation
from covlight.data.sparse import SUBJECT_KEY
from covlight.errors import ConfigError, DatasetError

# Stored images are 0..255 whatever the source kind (docs/ARCHITECTURE.md); this is the range each kind is scaled from.
STORED_RANGE = {kind: (0.0, 255.0) for kind in INTENSITY_KINDS}


class ScaleIntensity(tio.Transform):
    """Scale the stored image for the net, by its case's intensity kind (from dataset.json, never guessed).

    "range": the kind's stored range (0..255) to [0, 1]. "zscore": zero mean, unit variance per image (for slice
    sets whose pictures differ in brightness and contrast; the kind is still checked).
    """

    def __init__(self, scaling: str = "range", **kwargs):
        super().__init__(**kwargs)
        if scaling not in INTENSITY_SCALINGS:
            raise ConfigError(f"data.preprocessing.intensity_scaling={scaling!r}: use one of {INTENSITY_SCALINGS}")
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
            if unexpected == [UNKNOWN_LABEL] and SUBJECT_KEY not in subject:
                raise DatasetError(
                    f"{label.path}: holds {UNKNOWN_LABEL} (not annotated) voxels, but dataset.json does not list the "
                    "case as partially annotated (no annotated_slices in its entry). Re-import the dataset with "
                    "covlight.prepare, which records them.")
            unexpected = [v for v in unexpected if v != UNKNOWN_LABEL or SUBJECT_KEY not in subject]
            if unexpected:
                raise DatasetError(
                    f"{label.path}: unexpected label values {unexpected}; canonical labels are "
                    f"{LABELS}. Re-import with the right label mapping."
                )
        return subject


def class_indices(label_values: Sequence[int]) -> list[tio.Transform]:
    """Canonical label values to the subtask's class indices (values the subtask ignores become 0): a RemapLabels
    of the values that change, none for a subtask of every label."""
    values = list(label_values)
    remapping = {value: values.index(value) if value in values else 0 for value in LABELS.values()}
    changes = {old: new for old, new in remapping.items() if old != new}
    return [tio.RemapLabels(changes)] if changes else []


def pad_to_at_least(size: Sequence[int]) -> tio.Transform:
    """Pad every spatial size to at least `size`, never crop: each image with its minimum (a label with 0, its
    background). An odd amount puts the extra voxel before the image (TorchIO's rule)."""
    return tio.CropOrPad(tuple(int(n) for n in size), padding_mode="minimum", only_pad=True)


class Contrast(tio.IntensityTransform):
    """Scale each image's deviation from its mean by `factor` (one per image name), clipped to its original range."""

    def __init__(self, factor: float | dict[str, float], **kwargs):
        super().__init__(**kwargs)
        self.factor = factor
        self.args_names = ["factor"]

    def apply_transform(self, subject: tio.Subject) -> tio.Subject:
        for name, image in self.get_images_dict(subject).items():
            data = image.data.float()
            mean = data.mean()
            image.set_data(((data - mean) * self.get_parameter(self.factor, name) + mean).clamp(data.min(), data.max()))
        return subject


class RandomContrast(RandomTransform, tio.IntensityTransform):
    """nnU-Net's contrast augmentation: `Contrast` with a factor drawn from `factor_range` per image."""

    def __init__(self, factor_range: Sequence[float] = (0.75, 1.25), **kwargs):
        super().__init__(**kwargs)
        self.factor_range = tuple(factor_range)

    def apply_transform(self, subject: tio.Subject) -> tio.Subject:
        factors = {name: float(torch.empty(()).uniform_(*self.factor_range))
                   for name in self.get_images_dict(subject)}
        return Contrast(factors, **self._get_base_args())(subject)


class HistogramWarp(tio.IntensityTransform):
    """A monotone piecewise-linear remapping between the image's deciles: each of the 10 gaps between consecutive
    deciles is scaled by its `factors` entry (one list per image name), the overall range kept."""

    def __init__(self, factors: Sequence[float] | dict[str, Sequence[float]], **kwargs):
        super().__init__(**kwargs)
        self.factors = factors
        self.args_names = ["factors"]

    def apply_transform(self, subject: tio.Subject) -> tio.Subject:
        for name, image in self.get_images_dict(subject).items():
            data = image.data.float()
            source = torch.quantile(data.flatten(), torch.linspace(0, 1, 11))
            gaps = source.diff() * torch.as_tensor(self.get_parameter(self.factors, name), dtype=torch.float32)
            scale = (source[-1] - source[0]) / gaps.sum().clamp_min(1e-8)
            target = source[0] + torch.cat([torch.zeros(1), gaps.cumsum(0)]) * scale
            image.set_data(torch.from_numpy(np.interp(data.numpy(), source.numpy(), target.numpy())).float())
        return subject


class RandomHistogramWarp(RandomTransform, tio.IntensityTransform):
    """Histogram augmentation: `HistogramWarp` with each gap factor exp(U(-strength, strength)), so intensity
    histograms vary as between scanners and reconstructions."""

    def __init__(self, strength: float = 0.5, **kwargs):
        super().__init__(**kwargs)
        self.strength = strength

    def apply_transform(self, subject: tio.Subject) -> tio.Subject:
        factors = {name: torch.empty(10).uniform_(-self.strength, self.strength).exp().tolist()
                   for name in self.get_images_dict(subject)}
        return HistogramWarp(factors, **self._get_base_args())(subject)


class Rot90(tio.SpatialTransform):
    """Rotate every image of the subject by `quarters` x 90 degrees in the axial plane (axes x, y), labels too."""

    def __init__(self, quarters: int, **kwargs):
        super().__init__(**kwargs)
        self.quarters = int(quarters)
        self.args_names = ["quarters"]

    def apply_transform(self, subject: tio.Subject) -> tio.Subject:
        for image in self.get_images(subject):
            if image.shape[1] != image.shape[2]:
                raise ConfigError(f"90-degree rotations need square axial patches, got {tuple(image.shape[1:])}: "
                                  "set model.patch_size=[n,n,z] or data.augmentation.rot90_probability=0")
            image.set_data(torch.rot90(image.data, self.quarters, dims=(1, 2)).contiguous())
        return subject


class RandomRot90(RandomTransform, tio.SpatialTransform):
    """`Rot90` by 1, 2 or 3 quarters, drawn uniformly: an infection model names no side, so a rotated or flipped
    slice is another plausible slice (not so for left and right lungs; the config refuses it there)."""

    def apply_transform(self, subject: tio.Subject) -> tio.Subject:
        return Rot90(int(torch.randint(1, 4, ())), **self._get_base_args())(subject)


def _rotated_half_extents(half: np.ndarray, axis: int, degrees: float) -> np.ndarray:
    """The half extents of the bounding box of a box of half extents `half` rotated about `axis` by any angle up to
    `degrees` either way."""
    limit = math.radians(min(abs(degrees), 90.0))
    out = half.copy()
    i, j = [k for k in range(3) if k != axis]
    for a, b, target in ((half[i], half[j], i), (half[j], half[i], j)):
        # max over |angle| <= limit of a cos + b sin: at atan2(b, a) when reachable, else at the limit
        best = math.atan2(b, a)
        out[target] = math.hypot(a, b) if best <= limit else a * math.cos(limit) + b * math.sin(limit)
    return out


@dataclass(frozen=True)
class AffineRange:
    """The rotations (largest angle about each axis, degrees) and the smallest scale the preset's affine draws, and
    the probability that a patch gets it (the sampler draws that patch with its context)."""

    degrees: tuple[float, float, float]
    smallest_scale: float
    probability: float = 1.0

    def drawn_size(self, patch_size: Sequence[int], spacing: Sequence[float]) -> tuple[int, int, int]:
        """The patch to draw so that any affine of this range about its centre resamples the centred `patch_size`
        from voxels inside it (linear interpolation included).

        In millimetres: the voxel centres of the final patch span `half` either side of its centre; the affine reads
        them from the inverse rotations and scales of those points, inside the bounding box of the box rotated about
        each axis in turn (every order of the three, so whichever order the rotation is composed in) and divided by
        the smallest scale (a 2D patch of z-size 1 keeps its size along z). The margin is even, so the centres of the
        drawn and the final patch coincide.
        """
        size = np.asarray(patch_size, dtype=int)
        step = np.asarray(spacing, dtype=float)
        half = (size - 1) / 2 * step
        reach = half.copy()
        for order in itertools.permutations(range(3)):
            box = half
            for axis in order:
                box = _rotated_half_extents(box, axis, self.degrees[axis])
            reach = np.maximum(reach, box)
        reach /= min(self.smallest_scale, 1.0)
        margin = np.maximum(np.ceil(reach / step - (size - 1) / 2 - 1e-6), 0).astype(int)
        margin[size == 1] = 0
        return tuple(int(n) for n in size + 2 * margin)


def affine_range(spatial_dims: int, options: Augmentation | None = None) -> AffineRange | None:
    """The affine of the preset for these options (None when it never applies one)."""
    a = options or Augmentation()
    if not a.affine_probability:
        return None
    degrees = (0.0, 0.0, a.degrees) if spatial_dims == 2 else (a.degrees / 3, a.degrees / 3, a.degrees)
    return AffineRange(degrees=degrees, smallest_scale=float(min(a.scales)), probability=a.affine_probability)


def centre_cropping(shape: Sequence[int], size: Sequence[int]) -> tuple[int, ...]:
    """TorchIO's cropping (x before, x after, y ..., z ...) that leaves the centred `size` of `shape`; the extra
    voxel of an odd difference is cropped at the end."""
    bounds = []
    for n, keep in zip(shape, size, strict=True):
        if keep > n:
            raise ValueError(f"cannot crop {tuple(shape)} to {tuple(size)}")
        before = (n - keep) // 2
        bounds += [before, n - keep - before]
    return tuple(bounds)


class CentredAffine(tio.Affine):
    """TorchIO's Affine about the image centre, resampled onto the image's centred `size` only (never onto the rest,
    which only feeds the interpolation)."""

    def __init__(self, size: Sequence[int], scales, degrees, **kwargs):
        kwargs.setdefault("default_pad_value", "minimum")
        super().__init__(scales, degrees, (0, 0, 0), **kwargs)
        self.size = tuple(int(n) for n in size)
        self.args_names = [*self.args_names, "size"]
        del self.args_names[self.args_names.index("translation")]

    def apply_transform(self, subject: tio.Subject) -> tio.Subject:
        bounds = centre_cropping(subject.spatial_shape, self.size)
        start = np.asarray(bounds[::2], dtype=float)
        cropped = []
        for image in self.get_images(subject):
            affine = image.affine.copy()
            affine[:3, 3] = affine[:3, :3] @ start + affine[:3, 3]
            cropped.append((image, affine))
        subject = super().apply_transform(subject)
        for image, affine in cropped:
            image.affine = affine
        return subject

    def apply_affine_transform(self, sitk_image, transform, interpolation: str, default_value: float) -> torch.Tensor:
        bounds = centre_cropping(sitk_image.GetSize(), self.size)
        start = bounds[::2]
        reference = sitk_image[start[0]:start[0] + self.size[0], start[1]:start[1] + self.size[1],
                               start[2]:start[2] + self.size[2]]
        resampler = sitk.ResampleImageFilter()
        resampler.SetInterpolator(self.get_sitk_interpolator(interpolation))
        resampler.SetReferenceImage(reference)
        resampler.SetDefaultPixelValue(float(default_value))
        resampler.SetOutputPixelType(sitk.sitkFloat32)
        resampler.SetTransform(transform)
        return torch.as_tensor(sitk.GetArrayFromImage(resampler.Execute(sitk_image)).transpose())


class RandomAffineCrop(RandomTransform, tio.SpatialTransform):
    """The preset's spatial step: a patch drawn larger than `size` (the sampler drew it with the context of an
    affine, `AffineRange`) gets a `CentredAffine` of a scaling and rotation drawn as TorchIO's RandomAffine draws
    them and comes out at `size`; a patch of `size` passes as it is."""

    def __init__(self, size: Sequence[int], scales: Sequence[float], degrees: Sequence[float], **kwargs):
        super().__init__(**kwargs)
        self.size = tuple(int(n) for n in size)
        self.ranges = tio.RandomAffine(scales=tuple(scales), degrees=tuple(degrees))

    def apply_transform(self, subject: tio.Subject) -> tio.Subject:
        if tuple(subject.spatial_shape) == self.size:
            return subject
        # The patch is never deep-copied (the preset does not copy it, this transform is told copy=False): its images
        # become new objects that share the data, and the affine gives them new data of the patch size, so the
        # caller's patch is left as it was without copying the large drawn patch.
        subject = copy.copy(subject)
        subject.applied_transforms = list(subject.applied_transforms)
        for name, image in subject.get_images_dict(intensity_only=False).items():
            subject[name] = copy.copy(image)
        r = self.ranges
        scales, degrees, _ = r.get_params(r.scales, r.degrees, r.translation, r.isotropic)
        return CentredAffine(self.size, scales.tolist(), degrees.tolist(), **{**self._get_base_args(), "copy": False})(
            subject)


def augmentation_preset(spatial_dims: int, options: Augmentation | None, patch_size: Sequence[int]) -> tio.Compose:
    """The nnU-Net-spirit preset: affine, gamma, noise, blur, simulated low resolution (and flips and 90-degree
    rotations if asked), for
    patches drawn by a sampler told `affine_range(spatial_dims, options)`: it draws a patch that is to get the affine
    (with `affine_probability`) larger, with its context, and the affine crops it to `patch_size`.

    Off by default, for intensity domain generalisation: bias field, contrast and histogram augmentation.

    Rotations are in-plane for 2D models and mostly in-plane for 3D (slices are usually much thicker).
    """
    a = options or Augmentation()
    if spatial_dims == 2:
        rotation = (0, 0, 0, 0, -a.degrees, a.degrees)
        low_resolution_axes = (0, 1)
    else:
        small = a.degrees / 3
        rotation = (-small, small, -small, small, -a.degrees, a.degrees)
        low_resolution_axes = (0, 1, 2)
    transforms = [
        RandomAffineCrop(patch_size, scales=a.scales, degrees=rotation, copy=False),
        tio.RandomAnisotropy(axes=low_resolution_axes, downsampling=tuple(a.low_resolution_factor),
                             p=a.low_resolution_probability),
        tio.RandomBlur(std=tuple(a.blur_std), p=a.blur_probability),
        tio.RandomNoise(std=tuple(a.noise_std), p=a.noise_probability),
        tio.RandomGamma(log_gamma=tuple(a.log_gamma), p=a.gamma_probability),
    ]
    if a.flip_axes:
        transforms.insert(1, tio.RandomFlip(axes=tuple(a.flip_axes), flip_probability=0.5))
    if a.rot90_probability:
        transforms.insert(1, RandomRot90(p=a.rot90_probability))
    if a.bias_field_probability:
        transforms.append(tio.RandomBiasField(coefficients=a.bias_field_coefficients, p=a.bias_field_probability))
    if a.contrast_probability:
        transforms.append(RandomContrast(a.contrast_range, p=a.contrast_probability))
    if a.histogram_probability:
        transforms.append(RandomHistogramWarp(a.histogram_strength, p=a.histogram_probability))
    return tio.Compose(transforms, copy=False)  # each transform copies what it changes (RandomAffineCrop: see there)

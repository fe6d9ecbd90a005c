"""Resampling rules to a model's working spacing and back.

`linear` is covlight's own (TorchIO's linear resampling of images, nearest neighbour for labels; the
probabilities return trilinearly). `nnunet_v1` is nnU-Net v1's, for models converted from it (covlight.convert):
images through third-order splines and labels through per-class linear resizing, except along the low-resolution
axis of an anisotropic scan (spacing ratio above 3), which is resampled with order 0 after each slice has been resized
in-plane; probabilities return linearly, with the same order 0 along that axis. The new grid has v1's shape
(`round(shape * spacing / target)`) and covers the same field of view, so the affine stays true.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
import torchio as tio
from skimage.transform import resize

V1_ANISOTROPY_THRESHOLD = 3.0  # nnU-Net v1's RESAMPLING_SEPARATE_Z_ANISO_THRESHOLD


def v1_shape(shape: Sequence[int], spacing: Sequence[float], target_spacing: Sequence[float]) -> tuple[int, ...]:
    return tuple(int(n) for n in np.round(np.asarray(spacing, float) / np.asarray(target_spacing, float)
                                          * np.asarray(shape)))


def _anisotropic(spacing: Sequence[float]) -> bool:
    spacing = np.asarray(spacing, float)
    return bool(spacing.max() / spacing.min() > V1_ANISOTROPY_THRESHOLD)


def v1_separate_axis(spacing: Sequence[float], target_spacing: Sequence[float]) -> int | None:
    """The axis v1 resamples on its own, with order 0: the coarsest axis of the scan if the scan is anisotropic,
    else of the target if the target is; none if that grid has two coarsest axes (e.g. 0.24, 1.25, 1.25)."""
    for grid in (spacing, target_spacing):
        if _anisotropic(grid):
            grid = np.asarray(grid, float)
            axes = np.flatnonzero(grid == grid.max())
            return int(axes[0]) if len(axes) == 1 else None
    return None


def _resize_labels(labels: np.ndarray, shape: Sequence[int], order: int) -> np.ndarray:
    """v1's `resize_segmentation`: each value's mask resized with `order` and kept where it reaches 0.5."""
    if order == 0:
        return resize(labels.astype(float), shape, order=0, mode="edge", clip=True, anti_aliasing=False
                      ).astype(labels.dtype)
    out = np.zeros(shape, dtype=labels.dtype)
    for value in np.unique(labels):
        mask = resize((labels == value).astype(float), shape, order=order, mode="edge", clip=True,
                      anti_aliasing=False)
        out[mask >= 0.5] = value
    return out


def v1_resize(array: np.ndarray, shape: Sequence[int], separate_axis: int | None, is_label: bool) -> np.ndarray:
    """One 3D array resized as v1's `resample_data_or_seg` does (images order 3, labels order 1, order 0 along
    `separate_axis`)."""
    shape = tuple(int(n) for n in shape)
    if tuple(array.shape) == shape:
        return array
    order = 1 if is_label else 3

    def resize_2d(plane: np.ndarray, size: Sequence[int]) -> np.ndarray:
        if is_label:
            return _resize_labels(plane, size, order)
        return resize(plane.astype(float), size, order=order, mode="edge", anti_aliasing=False)

    if separate_axis is None:
        return resize_2d(array, shape).astype(array.dtype)
    in_plane = tuple(n for axis, n in enumerate(shape) if axis != separate_axis)
    slices = [resize_2d(np.take(array, index, axis=separate_axis), in_plane)
              for index in range(array.shape[separate_axis])]
    stacked = np.stack(slices, axis=separate_axis)
    if stacked.shape[separate_axis] == shape[separate_axis]:
        return stacked.astype(array.dtype)
    # Order 0 along the coarse axis with skimage's centre-aligned coordinates, as v1's map_coordinates call: the
    # other axes map onto themselves, so it is a choice of slices (round half up, clamped at the ends).
    index = nearest_indices(stacked.shape[separate_axis], shape[separate_axis])
    return np.take(stacked, index, axis=separate_axis).astype(array.dtype)


def nearest_indices(old: int, new: int) -> np.ndarray:
    """For each of `new` centre-aligned positions, the nearest of `old` (scipy's order-0 rule)."""
    centres = (float(old) / new) * (np.arange(new, dtype=float) + 0.5) - 0.5
    return np.clip(np.floor(centres + 0.5), 0, old - 1).astype(int)


class NNUNetV1Resample(tio.SpatialTransform):
    """Every image of a subject to `target_spacing` (mm, the subject's axes) by v1's rule; the affine follows."""

    def __init__(self, target_spacing: Sequence[float], **kwargs):
        super().__init__(**kwargs)
        self.target_spacing = tuple(float(s) for s in target_spacing)
        self.args_names = ["target_spacing"]

    def apply_transform(self, subject: tio.Subject) -> tio.Subject:
        for image in self.get_images(subject):
            spacing = image.spacing
            shape = v1_shape(image.spatial_shape, spacing, self.target_spacing)
            axis = v1_separate_axis(spacing, self.target_spacing)
            is_label = isinstance(image, tio.LabelMap)
            data = image.data.numpy()
            resized = np.stack([v1_resize(channel, shape, axis, is_label) for channel in data])
            scale = np.asarray(image.spatial_shape, float) / np.asarray(shape, float)
            voxel_to_old = np.eye(4)
            voxel_to_old[:3, :3] = np.diag(scale)
            voxel_to_old[:3, 3] = 0.5 * scale - 0.5  # a new voxel's centre in old voxel coordinates
            image.set_data(torch.from_numpy(resized))
            image.affine = image.affine @ voxel_to_old
        return subject


def resample_step(rule: str, target_spacing: Sequence[float]) -> tio.Transform:
    if rule == "nnunet_v1":
        return NNUNetV1Resample(target_spacing)
    return tio.Resample(tuple(target_spacing))


def separate_axis(rule: str, spacing: Sequence[float], target_spacing: Sequence[float] | None) -> int | None:
    """The axis whose probabilities return with order 0 (`nnunet_v1` on anisotropic grids), else None."""
    if rule != "nnunet_v1" or target_spacing is None:
        return None
    return v1_separate_axis(spacing, target_spacing)


def probabilities_on_grid(probabilities: torch.Tensor, shape: Sequence[int],
                          nearest_axis: int | None = None) -> torch.Tensor:
    """(C, *spatial) probabilities resized to `shape`: linearly with centre-aligned corners, except along
    `nearest_axis` (order 0, as v1 returns its softmax along the coarse axis of an anisotropic scan)."""
    shape = tuple(int(n) for n in shape)
    if tuple(probabilities.shape[1:]) == shape:
        return probabilities
    modes = {2: "bilinear", 3: "trilinear"}
    if nearest_axis is None or probabilities.dim() != 4:
        return F.interpolate(probabilities[None], size=shape, mode=modes[probabilities.dim() - 1],
                             align_corners=False)[0]
    moved = probabilities.movedim(nearest_axis + 1, 0)  # (axis, C, plane...)
    plane = tuple(n for axis, n in enumerate(shape) if axis != nearest_axis)
    moved = F.interpolate(moved, size=plane, mode="bilinear", align_corners=False)
    old, new = moved.shape[0], shape[nearest_axis]
    if old != new:
        moved = moved.index_select(0, torch.from_numpy(nearest_indices(old, new)).to(moved.device))
    return moved.movedim(0, nearest_axis + 1)

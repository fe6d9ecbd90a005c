"""Normalized surface Dice (NSD) by DeepMind's surfel-area method, computed only where it matters.

`surface-distance` computes a full distance transform over the masks' bounding box and sorts every surfel, but
NSD only needs, for each surface point, whether the other surface has a point within the tolerance. Both
surfaces live on the same corner grid, so that question is a lookup at the few integer offsets whose length is
within the tolerance: gathers on the surface points alone, on the masks' device. Offset lengths are computed in
float64 with exactly the operations of scipy's `distance_transform_edt(sampling=spacing)` that
`surface-distance` uses, so points at the tolerance (common with round spacings) are decided identically. (The
one conceivable difference: scipy measures the one nearest point its feature transform picks, this tests every
offset; they could disagree only if two offsets of the same exact length rounded to different float64 values
exactly at the tolerance. No randomised comparison has found one.)

The cost grows with the surface points and the number of offsets within the tolerance (about the volume of the
tolerance ball in voxels: 11 at 1 mm and 235 at 3 mm for 0.7 x 0.7 x 1 mm), not with the volume.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from covlight.metrics.backend import ops_for
from covlight.metrics.masks import as_masks, as_spacing, bounding_box, union_box
from covlight.metrics.surfels import neighbour_codes, surfel_area_table


def normalized_surface_dice(pred, gt, spacing_mm, tolerance_mm) -> float:
    """Surface Dice at `tolerance_mm`: the share of both surfaces' area within the tolerance of the other.

    Equals `compute_surface_dice_at_tolerance(compute_surface_distances(gt, pred, spacing_mm), tolerance_mm)` of
    `surface-distance` 0.1 (a point counts when its distance is <= the tolerance). NaN when both masks are empty,
    0 when one is. `spacing_mm` is in the array's axis order; 2D and 3D masks, numpy or torch on any device.
    """
    pred, gt = as_masks(pred, gt)
    spacing = as_spacing(spacing_mm, gt.ndim)
    tolerance = float(tolerance_mm)
    if not (math.isfinite(tolerance) and tolerance >= 0):
        raise ValueError(f"tolerance_mm must be finite and >= 0, got {tolerance_mm}")
    pred_box, gt_box = bounding_box(pred), bounding_box(gt)
    if pred_box is None and gt_box is None:
        return math.nan
    if pred_box is None or gt_box is None:
        return 0.0

    offsets = offsets_within(spacing, tolerance)
    margin = np.abs(offsets).max(axis=0)
    box = union_box(pred_box, gt_box)
    surface_pred, surface_gt = Surface.of(pred, box, margin), Surface.of(gt, box, margin)
    steps = [int(np.dot(offset, surface_gt.strides)) for offset in offsets]
    matched = surface_gt.codes_near(surface_pred, steps) + surface_pred.codes_near(surface_gt, steps)
    area = surfel_area_table(spacing)
    total = surface_gt.code_counts() + surface_pred.code_counts()
    return float(np.dot(matched[: area.size], area) / np.dot(total[: area.size], area))


def offsets_within(spacing: tuple[float, ...], tolerance: float) -> np.ndarray:
    """Integer grid offsets (K x ndim) whose length in mm is <= `tolerance`, nearest first.

    The length is sqrt(sum((offset_i * spacing_i)^2)) evaluated as scipy's EDT does it (float64, multiply by
    the spacing, square, sum over axes in order, square root).
    """
    reach = [int(tolerance // s) + 1 for s in spacing]
    grid = np.stack(np.meshgrid(*[np.arange(-r, r + 1) for r in reach], indexing="ij"))
    scaled = grid.astype(np.float64)
    for axis, step in enumerate(np.asarray(spacing, dtype=np.float64)):
        scaled[axis] *= step
    np.multiply(scaled, scaled, scaled)
    length = np.sqrt(np.add.reduce(scaled, axis=0))
    inside = length <= tolerance
    order = np.argsort(length[inside], kind="stable")
    return grid[:, inside].T[order]


@dataclass
class Surface:
    """The surface points of one mask on a padded corner grid shared with the other mask.

    Points are kept in the chunks (slabs) they were found in, so every temporary stays small: fresh memory is
    slow to touch, more so than the arithmetic. Areas are summed as counts per neighbour code times the code's
    area, so the result does not depend on the order of summation (numpy and torch agree to the last bit).
    """

    chunks: list[tuple[object, object]]  # (flat index in the grid, neighbour code) of the surface points
    border: object  # flat bool map of the surface points over the whole grid
    strides: tuple[int, ...]  # of the grid, in elements

    @classmethod
    def of(cls, mask, box, margin: np.ndarray, slab_rows: int = 16) -> Surface:
        """The surface of `mask` cropped to `box` inside zeros (1 + `margin` voxels on each side).

        The padding keeps every neighbour offset of a surface point inside its own row of the flat grid. The
        grid is built in slabs along the first axis, and only the pages of the border map holding surface
        points are ever written.
        """
        ops = ops_for(mask)
        pad = [int(m) + 1 for m in margin]
        voxels = [hi - lo + 1 + 2 * p for (lo, hi), p in zip(box, pad, strict=True)]  # padded crop
        grid = [n - 1 for n in voxels]  # corner points: one fewer than voxels on every axis
        strides = tuple(int(np.prod(grid[axis + 1:])) for axis in range(len(grid)))
        full = 2 ** (2**mask.ndim) - 1
        (low, high), rest = box[0], box[1:]
        inner = tuple(slice(p, p + hi - lo + 1) for (lo, hi), p in zip(rest, pad[1:], strict=True))
        crop = tuple(slice(lo, hi + 1) for lo, hi in rest)
        border = ops.zeros_bool(int(np.prod(grid)), like=mask)
        chunks = []
        for first in range(0, grid[0], slab_rows):
            last = min(first + slab_rows, grid[0])  # corner rows [first, last) need voxel rows [first, last]
            start, stop = max(first, pad[0]), min(last + 1, pad[0] + high - low + 1)  # padded rows with mask
            if start >= stop:
                continue
            slab = ops.zeros_uint8([last - first + 1, *voxels[1:]], like=mask)
            shift = low - pad[0]
            slab[(slice(start - first, stop - first), *inner)] = mask[(slice(start + shift, stop + shift), *crop)]
            codes = neighbour_codes(slab)
            codes -= 1  # in place; code 0 wraps to 255, so surface points are those now below full - 1
            local = ops.flatnonzero(codes < full - 1)
            index = local + first * strides[0]
            border[index] = True
            chunks.append((index, codes.reshape(-1)[local] + 1))
        return cls(chunks=chunks, border=border, strides=strides)

    def code_counts(self) -> np.ndarray:
        """How many surface points have each neighbour code."""
        return sum(ops_for(code).bincount(code) for _, code in self.chunks)

    def codes_near(self, other: Surface, steps: list[int]) -> np.ndarray:
        """Per neighbour code, how many of this surface's points have a point of `other` at one of `steps`.

        Offsets go nearest first and matched points drop out, so a good segmentation costs little. Each offset
        is a view of the border map starting `step` further on, indexed by the points (shifted once, so that
        every view starts inside the map): no per-offset index arithmetic.
        """
        base = min(steps)
        matched = np.zeros(256, dtype=np.int64)
        for index, code in self.chunks:
            ops = ops_for(code)
            index = index + base
            for step in steps:
                hit = other.border[step - base:][index]
                matched += ops.bincount(code[hit])
                index, code = index[~hit], code[~hit]
                if index.shape[0] == 0:
                    break
        return matched

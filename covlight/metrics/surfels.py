"""Surface elements of a mask: neighbour codes on the corner grid, and their areas (DeepMind's method).

A corner point of the voxel grid sits between 2x2x2 voxels (2x2 in 2D); its neighbour code packs those voxels
into one byte with the weights of `surface-distance`'s kernel ([[[128, 64], [32, 16]], [[8, 4], [2, 1]]]: the
voxel at the lower index on every axis weighs most). Codes other than "none inside" and "all inside" are surface
points, and each code's surfel area (contour length in 2D) depends only on the code and the spacing.
"""

from __future__ import annotations

import math

import numpy as np

from covlight.metrics.surfel_normals import NORMALS_EIGHTHS


def surfel_area_table(spacing_mm) -> np.ndarray:
    """Area (mm^2; length in mm for 2D) of the surface elements of every neighbour code, float64.

    Computed the way `surface-distance` 0.1 computes its tables, so the areas agree to the last bits.
    """
    spacing = [float(s) for s in spacing_mm]
    if len(spacing) == 3:
        table = np.zeros(256)
        for code, normals in enumerate(NORMALS_EIGHTHS):
            total = 0.0
            for normal in normals:
                n = np.array(normal, dtype=np.float64) / 8
                scaled = np.array([n[0] * spacing[1] * spacing[2], n[1] * spacing[0] * spacing[2],
                                   n[2] * spacing[0] * spacing[1]])
                total += np.linalg.norm(scaled)
            table[code] = total
        return table
    return _contour_length_table(*spacing)


def _contour_length_table(vertical: float, horizontal: float) -> np.ndarray:
    """Marching-squares contour length per 2x2 code (bits: top-left 8, top-right 4, bottom-left 2, bottom-right 1).

    One or three corners inside: a segment cutting one corner off, half the cell's diagonal; two adjacent
    corners: a straight edge across the cell (a row pair spans axis 1, a column pair axis 0); two opposite
    corners: two half diagonals.
    """
    diagonal = 0.5 * math.sqrt(vertical**2 + horizontal**2)
    table = np.zeros(16)
    for code in range(1, 15):
        inside = bin(code).count("1")
        if inside in (1, 3):
            table[code] = diagonal
        elif code in (0b0011, 0b1100):
            table[code] = horizontal
        elif code in (0b0101, 0b1010):
            table[code] = vertical
        else:  # 0b0110, 0b1001
            table[code] = 2 * diagonal
    return table


def neighbour_codes(padded):
    """Neighbour code of every corner point of a uint8 0/1 mask; the result is one smaller on every axis.

    `codes[y]` encodes voxels `y` and `y + 1` on every axis, so a mask with at least one zero voxel around it
    on every side gets its whole surface. Built one axis at a time (shift, weight, add): exact in uint8, and
    the same for numpy arrays and torch tensors on any device.
    """
    codes = padded
    ndim = padded.ndim
    for axis in reversed(range(ndim)):
        before = (slice(None),) * axis
        weight = 2 ** (2 ** (ndim - 1 - axis))
        shifted = codes[before + (slice(None, -1),)] * weight
        shifted += codes[before + (slice(1, None),)]
        codes = shifted
    return codes

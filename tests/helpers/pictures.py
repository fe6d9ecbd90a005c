"""Slices as the importers' pictures."""

from __future__ import annotations

import numpy as np


def picture_of(stored_slice: np.ndarray) -> np.ndarray:
    """A canonical (x, y) slice as the importer's radiological picture: picture[row, col] = slice[W-1-col, H-1-row]."""
    return np.ascontiguousarray(stored_slice.T[::-1, ::-1]).astype(np.uint8)

"""Checks and conversions every importer shares: intensity kinds, label maps, left/right anatomy, lung splitting.

Left and right are decided in RAS+ world coordinates: +x points to the patient's right, so the left lung has the
smaller x (docs/ARCHITECTURE.md). All functions take canonical (RAS+) arrays unless they say otherwise.
"""

from __future__ import annotations

import re

import numpy as np
from scipy import ndimage

from covlight.benchmark import UNKNOWN_LABEL
from covlight.data.canonical import HU_WINDOW, hu_to_0_255
from covlight.data.importers.volumes import Volume
from covlight.errors import CovlightError, DatasetError

AIR_HU = (-1100.0, -900.0)
MIN_AIR_SHARE = 0.005  # an HU chest CT has far more air than this (outside the body, lungs)
LUNG_MAX_MEDIAN_HU = -300.0  # labelled lungs lie over air-filled tissue; a misplaced mask does not
SECOND_LUNG_SHARE = 0.1  # a component this large relative to the largest counts as the other lung


# ---- intensities -----------------------------------------------------------------------------------------------


def recognise_kind(volume: Volume) -> str:
    """`window_0_255` for an image already in 0..255 (the Radiopaedia scans), else `hu`."""
    low, high = float(volume.array.min()), float(volume.array.max())
    return "window_0_255" if low >= 0.0 and high <= 255.0 else "hu"


def to_0_255(volume: Volume, kind: str) -> np.ndarray:
    """The stored image (float32, 0..255) from a source image of the given kind, checking the kind first."""
    array = volume.array
    if array.dtype.kind == "f":
        bad = int(np.count_nonzero(~np.isfinite(array)))
        if bad:
            raise DatasetError(
                f"{volume.name}: {bad} NaN or infinite voxel{'s' if bad > 1 else ''} (of {array.size}); covlight "
                "stores none, and training would stop on them. Repair the scan (e.g. set them to the air value, "
                "-1000 HU) and import it again."
            )
    if kind == "hu":
        share = float(np.mean((array >= AIR_HU[0]) & (array <= AIR_HU[1])))
        if share < MIN_AIR_SHARE:
            raise DatasetError(
                f"{volume.name}: not a CT in Hounsfield units: only {share:.2%} of voxels lie in the air range "
                f"{AIR_HU[0]:.0f}..{AIR_HU[1]:.0f} HU (values {float(array.min()):.0f}..{float(array.max()):.0f}). "
                "An image already windowed to 0..255 (or an 8-bit picture) is not in HU: with the folder importer "
                "declare --intensity window_0_255 (or 8bit); a scan stored without its rescale intercept needs "
                "converting to HU first."
            )
        return hu_to_0_255(array)
    if float(array.min()) < 0.0 or float(array.max()) > 255.0:
        raise DatasetError(
            f"{volume.name}: declared {kind} but values span {float(array.min()):.0f}..{float(array.max()):.0f}, "
            "outside 0..255. Declare --intensity hu if the image is in Hounsfield units."
        )
    if kind == "8bit" and not np.array_equal(array, np.round(array)):
        raise DatasetError(f"{volume.name}: declared 8bit but holds fractional values; use window_0_255.")
    return array.astype(np.float32)


def hu_of(stored: float) -> float:
    """The HU value a stored (0..255) intensity stands for."""
    low, high = HU_WINDOW
    return low + stored * (high - low) / 255.0


# ---- label values ----------------------------------------------------------------------------------------------


def integer_values(volume: Volume) -> np.ndarray:
    """The label array as integers, refusing fractional values (an interpolated or probability mask)."""
    array = volume.array
    if array.dtype.kind == "f":
        rounded = np.rint(array)
        if not np.array_equal(rounded, array):
            raise DatasetError(f"{volume.name}: the mask holds fractional values (e.g. {_fraction(array)}); "
                               "a label map must hold whole numbers. Use the original mask, not a resampled one.")
        array = rounded
    return array.astype(np.int64)


def _fraction(array: np.ndarray) -> float:
    return float(array[array != np.rint(array)].flat[0])


UNMAPPED_FIX = ("Give a label map that covers them (--label-map VALUE:0 drops a structure; VALUE:unknown marks "
                "voxels nobody annotated, e.g. 128:unknown).")


class LabelMap:
    """Source label values -> canonical values, parsed from text such as "1:3,2:3" or "3:1,7-11:1,2:2"; the target
    `unknown` (e.g. "128:unknown") marks voxels nobody annotated (UNKNOWN_LABEL, sparse annotations).

    Value 0 maps to 0 unless given; any other value not in the map stops the import (never silently dropped).
    """

    def __init__(self, mapping: dict[int, int], text: str = ""):
        self.mapping = {0: 0, **mapping}
        self.text = text or ",".join(f"{k}:{v}" for k, v in mapping.items())
        bad = {v for v in self.mapping.values() if v not in (0, 1, 2, 3, UNKNOWN_LABEL)}
        if bad:
            raise CovlightError(f"label map {self.text!r}: targets {sorted(bad)} are not canonical labels (0-3) "
                                "nor 'unknown'")

    @classmethod
    def parse(cls, text: str) -> LabelMap:
        mapping = {}
        for item in filter(None, (part.strip() for part in text.split(","))):
            match = re.fullmatch(r"(\d+)(?:-(\d+))?:(\d+|unknown)", item)
            if not match:
                raise CovlightError(f"label map item {item!r} is not SOURCE:TARGET or FIRST-LAST:TARGET (e.g. "
                                    "1:3,4-6:0,128:unknown)")
            first, last = int(match[1]), int(match[2] or match[1])
            target = UNKNOWN_LABEL if match[3] == "unknown" else int(match[3])
            mapping.update(dict.fromkeys(range(first, last + 1), target))
        if not mapping:
            raise CovlightError(f"label map {text!r} is empty; give SOURCE:TARGET pairs such as 1:3")
        return cls(mapping, text)

    def apply(self, values: np.ndarray, name: str, fix: str = "") -> np.ndarray:
        present = np.unique(values)
        unexpected = [int(v) for v in present if int(v) not in self.mapping]
        if unexpected:
            raise DatasetError(
                f"{name}: unexpected label values {unexpected[:10]} (expected {sorted(self.mapping)}). "
                f"{fix or UNMAPPED_FIX}"
            )
        out = np.zeros(values.shape, np.uint8)
        for value in present:
            out[values == value] = self.mapping[int(value)]
        return out


# ---- anatomy ---------------------------------------------------------------------------------------------------


def world_x(mask: np.ndarray, affine: np.ndarray) -> float:
    """World x (mm, RAS+) of the centroid of a mask (from its projections: light on memory for big volumes)."""
    total = mask.sum()
    centre = [np.arange(n) @ mask.sum(axis=tuple(a for a in range(3) if a != axis)) / total
              for axis, n in enumerate(mask.shape)]
    return float(affine[0, :3] @ centre + affine[0, 3])


def check_sides(label: np.ndarray, affine: np.ndarray, name: str, both: bool = True, fix: str = "") -> None:
    """Stop when the voxels labelled left lung (1) do not lie left of those labelled right lung (2).

    `both`: a chest CT shows both lungs, so a volume with one side only is refused (a mask that marks both lungs
    with one value would otherwise pass as one lung); a single slice may show one.
    """
    left, right = label == 1, label == 2
    if not (left.any() and right.any()):
        if both and (left.any() or right.any()):
            only, value = ("left", 1) if left.any() else ("right", 2)
            raise DatasetError(
                f"{name}: only the {only} lung (label {value}) is present, but a chest CT shows both. If one value "
                "marks both lungs, split them by side (the folder importer's --split-lungs)."
            )
        return
    left_x, right_x = world_x(left, affine), world_x(right, affine)
    if left_x >= right_x:
        raise DatasetError(
            f"{name}: the voxels mapped to the left lung (1) lie at world x = {left_x:+.0f} mm, not left of those "
            f"mapped to the right lung (2) at x = {right_x:+.0f} mm (RAS+: +x is the patient's right, so the left "
            f"lung has the smaller x). The left/right label codes are swapped or the file's orientation header is "
            f"wrong. {fix or 'Check the label map (e.g. swap 1:2,2:1).'}"
        )


def check_lungs_over_air(label: np.ndarray, stored: np.ndarray, name: str, image_name: str) -> None:
    """Stop when the labelled lungs do not lie over air-filled tissue: the mask is misaligned with the image."""
    lungs = np.isin(label, (1, 2))
    if not lungs.any():
        return
    median_hu = hu_of(float(np.median(stored[lungs])))
    if median_hu > LUNG_MAX_MEDIAN_HU:
        raise DatasetError(
            f"{name}: the lungs it labels do not lie over air in {image_name} (median {median_hu:.0f} HU; lungs are "
            f"mostly below {LUNG_MAX_MEDIAN_HU:.0f} HU). The mask does not line up with the image: check the "
            "pairing of files and their orientation."
        )


def split_lungs(label: np.ndarray, affine: np.ndarray, single_slice: bool, name: str) -> np.ndarray:
    """Re-split the lung voxels (1 or 2) into left (1) and right (2) by connected components and side.

    Components are taken over lungs and lesions together, so a lesion does not cut a lung apart. The two largest
    components are the lungs, the one with the smaller world x the left; any smaller piece joins the lung nearest
    to it. A volume whose lungs form one component cannot be split and stops; in a single slice (where one lung
    may be missing or the two may touch) each voxel takes the side of the field of view's middle it lies on.
    """
    lungs = np.isin(label, (1, 2))
    if not lungs.any():
        return label
    components, count = ndimage.label(np.isin(label, (1, 2, 3)))
    sizes = np.bincount(components.ravel())[1:]
    order = np.argsort(-sizes) + 1  # component labels, largest first
    out = label.copy()
    if count >= 2 and sizes[order[1] - 1] >= SECOND_LUNG_SHARE * sizes[order[0] - 1]:
        first, second = order[:2]
        left_first = world_x(components == first, affine) < world_x(components == second, affine)
        side = np.zeros(count + 1, np.uint8)
        side[first], side[second] = (1, 2) if left_first else (2, 1)
        spacing = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
        boxes = ndimage.find_objects(components)
        for piece in order[2:]:
            side[piece] = side[_nearest(components, piece, boxes[piece - 1], (first, second), spacing)]
        out[lungs] = side[components[lungs]]
        return out
    if not single_slice:
        raise DatasetError(
            f"{name}: the lungs form one connected region, so they cannot be split into left and right by "
            "components. Use a mask with separate left and right lung labels."
        )
    centre_x = float(affine[0, :3] @ ((np.asarray(label.shape) - 1) / 2.0) + affine[0, 3])
    voxel_x = np.argwhere(lungs) @ affine[0, :3] + affine[0, 3]
    out[lungs] = np.where(voxel_x < centre_x, 1, 2)
    return out


def _nearest(components: np.ndarray, piece: int, box: tuple, lungs: tuple[int, int], spacing) -> int:
    """Which of the two lung components lies nearest (mm) to component `piece`, searched in a growing box around
    the piece (pieces are small, so this stays cheap)."""
    margin = 2
    while True:
        window = tuple(slice(max(b.start - margin, 0), b.stop + margin) for b in box)
        near = components[window]
        if np.isin(near, lungs).any() or all(w.start == 0 and w.stop >= n for w, n in zip(window, components.shape,
                                                                                            strict=True)):
            break
        margin *= 2
    distance = ndimage.distance_transform_edt(near != piece, sampling=spacing)
    reach = [distance[near == lung].min() if (near == lung).any() else np.inf for lung in lungs]
    return lungs[int(np.argmin(reach))]

"""Methods without a network: the classic automatic lung segmentation, and semi-automatic methods (random walker,
morphological active contours) started from a simulated user's seeds (covlight.data.interaction). (A graph cut
was measured and left out as redundant with the random walker: benchmarks/graph_cut.py.)

They learn nothing: `covlight.train` skips fit (`trains = False`) and runs only the test phase, through the same
data module, scoring, per-case CSV, predictions and loggers as a network. Each test case arrives at its own grid
(data.preprocessing.target_spacing=native) with its stored values (0..255, range scaling), its affine and its
intensity kind; a seeded method's batch also holds its `Seeds`, the only view of the truth it gets. A seeded
method can work on a coarser grid (`work_spacing_mm`, `at_work_spacing`): a full-size CT is too large for the
random walker on its own grid (benchmarks/results/semiauto_size.json).
"""

from __future__ import annotations

import lightning.pytorch as pl
import numpy as np
import torch
from scipy import ndimage

from covlight.data.canonical import HU_WINDOW
from covlight.data.interaction import UNSEEDED, Seeds
from covlight.errors import ConfigError, DatasetError

FROM_HU = ("hu", "window_0_255")  # intensity kinds whose stored values are the HU window [-1250, 250]
# What these methods need of the data module (SegmentationDataModule.preprocessing_state): the stored values on
# each case's own grid.
NATIVE_PREPROCESSING = {"target_spacing": None, "slice_size": None, "intensity_scaling": "range",
                        "histogram_landmarks": None}


def spacing_of(affine: np.ndarray) -> tuple[float, float, float]:
    return tuple(float(s) for s in np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0)))


def world_x(points: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """World x (mm; RAS+: larger toward the patient's right) of voxel indices (N, 3)."""
    return points @ np.asarray(affine)[0, :3] + np.asarray(affine)[0, 3]


class UntrainedSegmentation(pl.LightningModule):
    """A method that segments each test case on its own: no weights, no fit; `segment` gives class indices
    (positions in `label_values`) on the case's grid."""

    trains = False
    interactive = False  # True: needs data.interaction (seeds from the case's truth)
    subtasks: tuple[str, ...] = ("lung", "infection", "lung_infection")

    def __init__(self, label_values, subtask: str):
        super().__init__()
        if subtask not in self.subtasks:
            raise ConfigError(f"{type(self).__name__} segments subtask {' or '.join(self.subtasks)} only, not "
                              f"{subtask}: set subtask={self.subtasks[0]}, or choose another method")
        self.label_values = list(label_values)
        self.subtask = subtask

    def on_test_start(self) -> None:
        state = self.trainer.datamodule.preprocessing_state()
        state.pop("resampling", None)  # no resampling on the native grid, whatever the rule
        if state != NATIVE_PREPROCESSING:
            raise ConfigError(f"{type(self).__name__} reads each case's stored values on its own grid, but the data "
                              f"module's preprocessing is {state}; keep data.preprocessing.target_spacing=native, "
                              "intensity_scaling=range, histogram_standardisation=false and slices.policy=pad")

    def test_step(self, batch: dict, batch_idx: int) -> dict:
        stored = batch["image"][0].cpu().numpy().astype(np.float32) * 255.0
        affine = batch["affine"].cpu().numpy().astype(np.float64)
        classes = self.segment(stored, affine, batch)
        prediction = torch.as_tensor(np.asarray(self.label_values, dtype=np.uint8)[classes])
        return {"prediction": prediction}

    def segment(self, stored: np.ndarray, affine: np.ndarray, batch: dict) -> np.ndarray:
        raise NotImplementedError

    def configure_optimizers(self):
        return None


# --------------------------------------------------------------------------------- classic lung segmentation
def classic_lung_labels(hu: np.ndarray, affine: np.ndarray, threshold_hu: float = -320.0,
                        second_lung_share: float = 0.1) -> np.ndarray:
    """The standard automatic lung segmentation: 0 background, 1 left lung, 2 right lung.

    Voxels below `threshold_hu`; air connected to the scan's in-plane border (outside the body) removed; the two
    largest 3D components kept (the second only if at least `second_lung_share` of the first: else the lungs are
    joined and the smaller one is gas elsewhere); holes filled slice by slice (vessels); left and right by world x:
    two components by their centroids, one joined component cut at the emptiest column between its sides.
    """
    air = hu < threshold_hu
    components, count = ndimage.label(air)
    border = np.concatenate([components[0].ravel(), components[-1].ravel(), components[:, 0].ravel(),
                             components[:, -1].ravel()])
    sizes = np.bincount(components.ravel(), minlength=count + 1)
    sizes[0] = 0
    sizes[np.unique(border)] = 0
    order = np.argsort(-sizes)
    kept = [c for c in order[:2] if sizes[c] > 0]
    if len(kept) == 2 and sizes[kept[1]] < second_lung_share * sizes[kept[0]]:
        kept = kept[:1]
    labels = np.zeros(hu.shape, dtype=np.uint8)
    if not kept:
        return labels
    lungs = [np.stack([ndimage.binary_fill_holes(s) for s in np.moveaxis(components == c, 2, 0)], axis=2)
             for c in kept]
    if len(lungs) == 2:
        centres = [world_x(np.argwhere(mask), affine).mean() for mask in lungs]
        left, right = (0, 1) if centres[0] < centres[1] else (1, 0)
        labels[lungs[right]] = 2
        labels[lungs[left]] = 1
        return labels
    points = np.argwhere(lungs[0])
    x = world_x(points, affine)
    bins = np.arange(x.min(), x.max() + 2 * spacing_of(affine)[0], spacing_of(affine)[0])
    counts, edges = np.histogram(x, bins=bins)
    middle = slice(len(counts) // 4, max(len(counts) * 3 // 4, len(counts) // 4 + 1))
    cut = edges[middle.start + int(np.argmin(counts[middle]))]
    side = np.where(x < cut, 1, 2).astype(np.uint8)
    labels[tuple(points.T)] = side
    return labels


class ClassicLungSegmentation(UntrainedSegmentation):
    """The classic automatic lung pipeline (`classic_lung_labels`) on CT in HU: the floor a network must clear."""

    subtasks = ("lung",)

    def __init__(self, label_values, subtask: str, threshold_hu: float = -320.0, second_lung_share: float = 0.1):
        super().__init__(label_values, subtask)
        self.threshold_hu = float(threshold_hu)
        self.second_lung_share = float(second_lung_share)

    def segment(self, stored: np.ndarray, affine: np.ndarray, batch: dict) -> np.ndarray:
        kind = batch["intensity"]
        if kind not in FROM_HU:
            raise DatasetError(
                f"{batch['dataset']}/{batch['case_id']}: intensity kind {kind!r} in dataset.json is not from HU, so "
                f"the {self.threshold_hu:g} HU threshold means nothing there; import the CT in HU (prepare ... "
                "--intensity hu), or use a seeded method (method=random_walker)")
        low, high = HU_WINDOW
        hu = low + stored * ((high - low) / 255.0)
        labels = classic_lung_labels(hu, affine, self.threshold_hu, self.second_lung_share)
        return labels  # class index = label value for subtask lung (0, 1, 2)


# ------------------------------------------------------------------------------------------ seeded methods
def seed_crop(markers: np.ndarray, affine: np.ndarray, margin_mm: float | None) -> tuple[slice, ...]:
    """The in-plane box of the foreground seeds plus `margin_mm` (None: the whole volume), all slices: the
    structures are assumed to stay inside it (outside is background)."""
    if margin_mm is None:
        return tuple(slice(0, n) for n in markers.shape)
    foreground = np.argwhere(markers > 0)
    spacing = spacing_of(affine)
    box = []
    for axis in (0, 1):
        pad = int(np.ceil(margin_mm / spacing[axis]))
        box.append(slice(max(int(foreground[:, axis].min()) - pad, 0),
                         min(int(foreground[:, axis].max()) + pad + 1, markers.shape[axis])))
    return (*box, slice(0, markers.shape[2]))


def crop_markers(markers: np.ndarray, crop: tuple[slice, ...]) -> np.ndarray:
    """The seeds inside the crop, with the crop's in-plane faces that lie inside the volume made background."""
    inner = markers[crop].copy()
    for axis in (0, 1):
        if crop[axis].start > 0:
            np.moveaxis(inner, axis, 0)[0][np.moveaxis(inner, axis, 0)[0] == UNSEEDED] = 0
        if crop[axis].stop < markers.shape[axis]:
            np.moveaxis(inner, axis, 0)[-1][np.moveaxis(inner, axis, 0)[-1] == UNSEEDED] = 0
    return inner


def gradient_energy(image: np.ndarray, spacing) -> float:
    """The mean squared gradient (per mm) over the volume's neighbour pairs: the scale of the image's own contrast
    (CT in a HU window and CLAHE-enhanced 8-bit slices differ by ~30x)."""
    total, count = 0.0, 0
    for axis in range(image.ndim):
        if image.shape[axis] > 1:
            steps = np.diff(image, axis=axis) / spacing[axis]
            total += float(np.square(steps, dtype=np.float64).sum())
            count += steps.size
    return total / count if count else 0.0


def random_walker_classes(image: np.ndarray, markers: np.ndarray, affine: np.ndarray, beta: float = 10.0,
                          margin_mm: float | None = 20.0, tol: float = 1e-3) -> np.ndarray:
    """Class indices by scikit-image's random walker (3D, the voxel spacing as anisotropy) from `markers`
    (UNSEEDED or a class index), inside `seed_crop`; `image` in 0..1.

    Edge weights are exp(-beta * g^2 / mean(g^2)): `beta` is relative to the crop's own mean squared gradient
    (`gradient_energy`), so one value serves CT in HU and contrast-enhanced 8-bit slices alike. (scikit-image
    weights exp(-beta_sk * g^2 / (10 std)); the beta it is given is converted to that.)"""
    from skimage.segmentation import random_walker

    crop = seed_crop(markers, affine, margin_mm)
    seeds = crop_markers(markers, crop).astype(np.int32) + 1  # random_walker: 0 = unlabelled, labels 1..K
    classes = np.zeros(markers.shape, dtype=np.int64)
    if len(np.unique(seeds[seeds > 0])) < 2:  # one class seeded in the crop: it is all that class
        classes[crop] = int(seeds.max()) - 1
        return classes
    region, spacing = image[crop], spacing_of(affine)
    energy = gradient_energy(region, spacing)
    beta_sk = beta * 10.0 * float(region.std()) / energy if energy > 0 else 0.0
    found = random_walker(region, seeds, beta=beta_sk, mode="cg_j", tol=tol, spacing=spacing)
    classes[crop] = found - 1
    return classes


def active_contour_classes(image: np.ndarray, markers: np.ndarray, affine: np.ndarray, iterations: int = 30,
                           smoothing: int = 1, margin_mm: float | None = 20.0) -> np.ndarray:
    """Class indices by scikit-image's morphological Chan-Vese active contour, one structure at a time: started
    from the structure's seeds inside `seed_crop`, the region that follows keeps the pieces that touch the
    structure's seeds and never covers another class's seeds. A voxel two structures reach takes the later one."""
    from skimage.segmentation import morphological_chan_vese

    crop = seed_crop(markers, affine, margin_mm)
    inner = markers[crop]
    region = image[crop].astype(np.float64)
    classes = np.zeros(markers.shape, dtype=np.int64)
    found = np.zeros(inner.shape, dtype=np.int64)
    for index in range(1, int(inner.max()) + 1):
        start = inner == index
        if not start.any():
            continue
        grown = morphological_chan_vese(region, iterations, init_level_set=start.astype(np.int8),
                                        smoothing=smoothing).astype(bool)
        grown &= (inner == UNSEEDED) | start
        pieces, _ = ndimage.label(grown | start)
        touching = np.unique(pieces[start])
        found[np.isin(pieces, touching[touching > 0])] = index
    classes[crop] = found
    return classes


def work_factors(spacing, work_spacing_mm: float | None) -> tuple[int, ...]:
    """Integer block sizes per axis that bring `spacing` nearest to `work_spacing_mm` without refining it."""
    if work_spacing_mm is None:
        return (1,) * len(spacing)
    return tuple(max(1, round(work_spacing_mm / s)) for s in spacing)


def at_work_spacing(method, image: np.ndarray, markers: np.ndarray, affine: np.ndarray,
                    work_spacing_mm: float | None) -> np.ndarray:
    """`method(image, markers, affine)` run on a coarser grid (blocks of `work_factors` voxels: the image's block
    mean, each block's most frequent seed), its classes brought back to the case's grid by linear interpolation of
    each class's indicator (the largest wins), and the seeds kept as drawn. Without coarsening: `method` as is."""
    from skimage.measure import block_reduce

    factors = work_factors(spacing_of(affine), work_spacing_mm)
    if factors == (1, 1, 1):
        return method(image, markers, affine)
    coarse_image = block_reduce(image, factors, np.mean, cval=float(image.mean())).astype(image.dtype)
    count = int(markers.max()) + 1
    votes = np.stack([block_reduce(markers == c, factors, np.sum) for c in range(count)])
    coarse_markers = np.where(votes.any(axis=0), votes.argmax(axis=0), UNSEEDED).astype(markers.dtype)
    coarse_affine = np.asarray(affine, dtype=np.float64).copy()
    coarse_affine[:3, :3] = coarse_affine[:3, :3] * np.asarray(factors, dtype=np.float64)
    coarse_affine[:3, 3] = affine_origin_of_block(affine, factors)
    coarse = method(coarse_image, coarse_markers, coarse_affine)
    best = np.full(image.shape, -1.0, dtype=np.float32)
    classes = np.zeros(image.shape, dtype=np.int64)
    for c in range(count):
        indicator = ndimage.zoom((coarse == c).astype(np.float32), factors, order=1, mode="nearest",
                                 grid_mode=True)[tuple(slice(0, n) for n in image.shape)]
        wins = indicator > best
        classes[wins], best[wins] = c, indicator[wins]
    seeded = markers != UNSEEDED
    classes[seeded] = markers[seeded]
    return classes


def affine_origin_of_block(affine: np.ndarray, factors) -> np.ndarray:
    """World position of the centre of the first block of `factors` voxels."""
    centre = (np.asarray(factors, dtype=np.float64) - 1) / 2
    return np.asarray(affine)[:3, :3] @ centre + np.asarray(affine)[:3, 3]


class SeededSegmentation(UntrainedSegmentation):
    """A semi-automatic method: segments from the seeds of the simulated user (`batch["seeds"]`), on the case's
    grid or, with `work_spacing_mm`, on a coarser one (`at_work_spacing`)."""

    interactive = True

    def __init__(self, label_values, subtask: str, work_spacing_mm: float | None = None):
        super().__init__(label_values, subtask)
        self.work_spacing_mm = None if work_spacing_mm is None else float(work_spacing_mm)

    def segment(self, stored: np.ndarray, affine: np.ndarray, batch: dict) -> np.ndarray:
        seeds: Seeds | None = batch.get("seeds")
        if seeds is None:
            raise ConfigError(f"{type(self).__name__} needs seeds: set data.interaction (its method config does)")
        return at_work_spacing(self.from_seeds, stored / 255.0, seeds.markers, affine, self.work_spacing_mm)

    def from_seeds(self, image: np.ndarray, markers: np.ndarray, affine: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class RandomWalkerSegmentation(SeededSegmentation):
    """`random_walker_classes` from the seeds."""

    def __init__(self, label_values, subtask: str, beta: float = 10.0, margin_mm: float | None = 20.0,
                 tol: float = 1e-3, work_spacing_mm: float | None = None):
        super().__init__(label_values, subtask, work_spacing_mm)
        self.beta, self.margin_mm, self.tol = float(beta), margin_mm, float(tol)

    def from_seeds(self, image, markers, affine):
        return random_walker_classes(image, markers, affine, self.beta, self.margin_mm, self.tol)


class ActiveContourSegmentation(SeededSegmentation):
    """`active_contour_classes` from the seeds."""

    def __init__(self, label_values, subtask: str, iterations: int = 30, smoothing: int = 1,
                 margin_mm: float | None = 20.0, work_spacing_mm: float | None = None):
        super().__init__(label_values, subtask, work_spacing_mm)
        self.iterations, self.smoothing, self.margin_mm = int(iterations), int(smoothing), margin_mm

    def from_seeds(self, image, markers, affine):
        return active_contour_classes(image, markers, affine, self.iterations, self.smoothing, self.margin_mm)


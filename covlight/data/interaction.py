"""Simulated interaction: the one place where a test case's truth is read before its prediction.

Semi-automatic methods (covlight/methods/semiauto.py) start from seeds a user would draw. covlight simulates that
user from the case's own truth, the usual protocol for interactive methods: `k` axial slices, evenly spaced
through the extent of the subtask's structures (the slices holding them, cut into k runs of equal count, one slice
drawn from the middle half of each run by a seeded generator), given as full slices (every voxel of the slice
labelled) or as scribbles (in each seed slice, the skeleton of each eroded structure and of the eroded background;
each connected piece is one stroke). The effort is counted (slices, strokes) and the seed slices are left out of the benchmark's
scores (covlight/callbacks/scoring.py).

Only `SeedingStep` reads the truth, and the data module hands its `Seeds` to the test batch only when
`data.interaction` is set, which `covlight.train` allows for semi-automatic methods alone.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from covlight.benchmark import STRUCTURE_OF_VALUE
from covlight.data.canonical import read_nifti
from covlight.data.options import Interaction
from covlight.errors import DatasetError

UNSEEDED = -1
SCRIBBLE_EROSION_MM = 3.0  # strokes keep this far from a structure's edge (less when the structure is thinner)


@dataclass
class Seeds:
    """One case's simulated interaction.

    `markers`: int16 on the case's grid, UNSEEDED or the class index (the position in the subtask's label values;
    0 background) the user gave the voxel. `slices`: the axial (z) indices of the seed slices, excluded from the
    benchmark's scores. `strokes`: scribbles drawn (0 for full slices). (Not frozen: Lightning moves batches
    through dataclasses and refuses frozen ones.)
    """

    markers: np.ndarray
    slices: tuple[int, ...]
    mode: str
    strokes: int

    def effort(self) -> dict:
        """The annotation effort, as recorded in the run (annotation.json)."""
        return {"mode": self.mode, "slices": len(self.slices), "strokes": self.strokes,
                "seed_slices": list(self.slices)}


def seed_slices(foreground_slices: np.ndarray, k: int, rng: np.random.Generator) -> tuple[int, ...]:
    """k slices evenly spaced through the structure's extent: the sorted slices that hold it, cut into k runs of
    (nearly) equal count, one slice drawn from the middle half of each run (all of a run of 1-3 slices).

    The middle half, not the whole run: a user asked for one slice through a lung draws one through it, not its
    apex; drawn from a whole run, k=1 gave the lungs' last slice (140 voxels of ~1000) on 2 of 4 phantoms and a
    random walker lung DSC of 0.02-0.37 there (0.85-0.98 on the other two phantoms)."""
    chosen = []
    for run in np.array_split(np.sort(foreground_slices), k):
        quarter = len(run) // 4
        chosen.append(int(rng.choice(run[quarter:len(run) - quarter])))
    return tuple(chosen)


def scribbles(mask: np.ndarray, spacing_xy: tuple[float, float]) -> tuple[np.ndarray, int]:
    """A 2D mask's scribble: the skeleton of the mask eroded by SCRIBBLE_EROSION_MM (unless that would remove it,
    then of the mask itself), and its number of strokes (8-connected pieces)."""
    from skimage.morphology import skeletonize

    radius = [max(1, round(SCRIBBLE_EROSION_MM / s)) for s in spacing_xy]
    structure = np.ones((2 * radius[0] + 1, 2 * radius[1] + 1), dtype=bool)
    eroded = ndimage.binary_erosion(mask, structure=structure)
    skeleton = skeletonize(eroded if eroded.any() else mask)
    _, strokes = ndimage.label(skeleton, structure=np.ones((3, 3), dtype=bool))
    return skeleton, int(strokes)


class SeedingStep:
    """Draws each test case's seeds from its truth (the only reader of a test label before prediction)."""

    def __init__(self, options: Interaction, label_values: list[int]):
        self.options = options
        self.label_values = list(label_values)

    def __call__(self, dataset: str, case_id: str, label_path: Path, annotated: tuple[str, ...]) -> Seeds:
        names = [STRUCTURE_OF_VALUE[v] for v in self.label_values[1:]]
        where = f"{dataset}/{case_id}"
        unannotated = [n for n in names if n not in annotated]
        if unannotated:
            raise DatasetError(f"{where}: seeds for {', '.join(unannotated)}, which {dataset} does not annotate; "
                               "choose a subtask of the structures it annotates (subtask=...)")
        truth, label_file = read_nifti(label_path)
        truth = np.asarray(truth, dtype=np.uint8)
        classes = np.zeros(truth.shape, dtype=np.int16)
        for index, value in enumerate(self.label_values[1:], start=1):
            classes[truth == value] = index
        absent = [n for i, n in enumerate(names, start=1) if not (classes == i).any()]
        if absent:
            raise DatasetError(f"{where}: seeds for {', '.join(absent)}, which this case's truth lacks; leave the "
                               "case out of the test (or choose a subtask it holds)")
        held = np.flatnonzero((classes > 0).any(axis=(0, 1)))
        k = self.options.slices
        if k > len(held):
            raise DatasetError(f"{where}: data.interaction.slices={k} exceeds the {len(held)} slices that hold "
                               f"{' or '.join(names)}; use data.interaction.slices<={len(held)}")
        rng = np.random.default_rng([self.options.seed, zlib.crc32(where.encode())])
        chosen = seed_slices(held, k, rng)
        markers = np.full(truth.shape, UNSEEDED, dtype=np.int16)
        strokes = 0
        spacing_xy = tuple(float(s) for s in label_file.header.get_zooms()[:2])
        for z in chosen:
            if self.options.mode == "slices":
                markers[:, :, z] = classes[:, :, z]
                continue
            for index in range(len(self.label_values)):
                mask = classes[:, :, z] == index
                if not mask.any():
                    continue
                skeleton, pieces = scribbles(mask, spacing_xy)
                markers[:, :, z][skeleton] = index
                strokes += pieces
        return Seeds(markers=markers, slices=chosen, mode=self.options.mode, strokes=strokes)

"""The graph cut measured against the random walker and left out of covlight as redundant with it
(benchmarks/results/semiauto_real.json and semiauto_size.json; README, Methods without a network).

Boykov-Jolly graph cuts with PyMaxflow (the bench extra): intensity histograms learnt from the seeds, edges weighted
by the image gradient with anisotropic spacing, seeds as hard constraints; run like covlight's seeded methods (the
seeds' box, `work_spacing_mm`). Lung DSC left / right, graph cut against the random walker:
- 3 seed slices on CT: equal (phantoms 0.937/0.942 vs 0.935/0.941 and 0.973/0.970 vs 0.974/0.972; cip_chest_ct64
  0.984/0.979 vs 0.980/0.980; the 256x256x150 phantom at work_spacing_mm=2.7 0.968/0.963 vs 0.968/0.967), 5-40x
  faster;
- fewer or sparser seeds, or 8-bit CLAHE slices: worse, a lung lost (phantoms from 1 slice or from scribbles: left
  0.0 vs 0.92-0.97; covid_ctseg from 1 slice 0.02/0.61 vs 0.77/0.73, from 3 slices 0.55/0.69 vs 0.83/0.89);
- covid_ctseg infection: worse from 3 and 5 slices (0.25, 0.34 vs 0.36, 0.53), better from 1 (0.245 vs 0.065: its
  intensity model reaches lesions no seeded lesion touches), the one cell it wins, where every method stays low.
The walker at work_spacing_mm=2.7 keeps its DSC at full CT size, so speed does not keep it either.
"""

from __future__ import annotations

import numpy as np

from covlight.methods.semiauto import SeededSegmentation, crop_markers, gradient_energy, seed_crop, spacing_of

# As a conf/method file would give them (benchmarks/semiauto_real.py records them with each result).
SETTINGS = {"_target_": "benchmarks.graph_cut.GraphCutSegmentation", "smoothness": 10.0, "bins": 32,
            "margin_mm": 20.0, "work_spacing_mm": None}


def min_cut(edges, inside_cost, outside_cost, inside_seeds, outside_seeds) -> np.ndarray:
    """The voxels a Boykov-Jolly minimum cut puts inside (PyMaxflow): region costs paid per voxel for being inside or
    outside, `edges` the boundary weights per axis (`graph_cut_classes`), seeds as hard constraints."""
    import maxflow

    hard = 1e9
    graph = maxflow.Graph[float]()
    nodes = graph.add_grid_nodes(inside_cost.shape)
    for weights, neighbour in edges:
        graph.add_grid_edges(nodes, weights=weights, structure=neighbour, symmetric=True)
    # a source capacity is paid when its voxel ends outside, a sink capacity when it ends inside
    graph.add_grid_tedges(nodes, np.where(inside_seeds, hard, np.where(outside_seeds, 0.0, outside_cost)),
                          np.where(outside_seeds, hard, np.where(inside_seeds, 0.0, inside_cost)))
    graph.maxflow()
    return ~graph.get_grid_segments(nodes)


def graph_cut_classes(image: np.ndarray, markers: np.ndarray, affine: np.ndarray, smoothness: float = 10.0,
                      bins: int = 32, margin_mm: float | None = 20.0) -> np.ndarray:
    """Class indices by graph cuts (`min_cut`, PyMaxflow) inside `seed_crop`: the structures against the background,
    then, where there are several, each structure but the last against the structures after it, within what is left.

    Intensity models: the add-one smoothed histograms (`bins` bins over 0..1) of each class's seeds (the structures'
    union for the first cut); the region term is -log p(intensity), the rest's cost its most likely class's (two
    lungs of one intensity tie, and seeds and edges part them). The boundary term joins 6-neighbours by
    `smoothness` * exp(-g^2 / (2 mean(g^2))) * finest step / step, g the gradient per mm (anisotropic spacing)."""
    crop = seed_crop(markers, affine, margin_mm)
    inner = crop_markers(markers, crop)
    region = image[crop].astype(np.float64)
    spacing = spacing_of(affine)
    energy = gradient_energy(region, spacing)
    bin_of = np.clip((region * bins).astype(np.int64), 0, bins - 1)

    def cost(seeds: np.ndarray) -> np.ndarray:
        counts = np.bincount(bin_of[seeds], minlength=bins) + 1.0
        return -np.log(counts / counts.sum())[bin_of]

    edges = []
    for axis in range(3):
        steps = np.diff(region, axis=axis) / spacing[axis]
        weights = smoothness * np.exp(-steps**2 / (2 * energy)) * min(spacing) / spacing[axis]
        pad = [(0, 0)] * 3
        pad[axis] = (0, 1)
        neighbour = np.zeros((3, 3, 3))
        neighbour[tuple(2 if a == axis else 1 for a in range(3))] = 1
        edges.append((np.pad(weights, pad), neighbour))
    structures = [i for i in range(1, int(inner.max()) + 1) if (inner == i).any()]
    found = np.zeros(inner.shape, dtype=np.int64)
    if not structures:
        return np.zeros(markers.shape, dtype=np.int64)
    left = min_cut(edges, cost(inner > 0), cost(inner == 0), inner > 0, inner == 0)
    for position, index in enumerate(structures):
        later = structures[position + 1:]
        if not later:
            found[left] = index
            break
        others = np.min([cost(inner == other) for other in later], axis=0)
        mine = min_cut(edges, cost(inner == index), others, (inner == index) & left,
                       np.isin(inner, later) | ~left) & left
        found[mine] = index
        left &= ~mine
    classes = np.zeros(markers.shape, dtype=np.int64)
    classes[crop] = found
    return classes




class GraphCutSegmentation(SeededSegmentation):
    """`graph_cut_classes` from the seeds."""

    def __init__(self, label_values, subtask: str, smoothness: float = 10.0, bins: int = 32,
                 margin_mm: float | None = 20.0, work_spacing_mm: float | None = None):
        super().__init__(label_values, subtask, work_spacing_mm)
        self.smoothness, self.bins, self.margin_mm = float(smoothness), int(bins), margin_mm

    def from_seeds(self, image, markers, affine):
        return graph_cut_classes(image, markers, affine, self.smoothness, self.bins, self.margin_mm)

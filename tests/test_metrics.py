"""covlight.metrics against its oracles: surface-distance 0.1 (DSC, NSD) and medpy (HD95, ASSD).

surface-distance crashes on empty masks under NumPy 2 (np.Inf), so empty cases are checked against the rules in
docs/ARCHITECTURE.md ("The metric") directly. Ties at the tolerance are common (whole-mm tolerances, round spacings): the generated cases use
tolerances that are multiples of the spacing, so many surface points sit exactly at the tolerance.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import surface_distance as sd
import torch
from medpy.metric import binary as medpy_binary
from scipy import ndimage
from surface_distance import lookup_tables

from covlight.benchmark import STRUCTURES
from covlight.metrics import assd, dice, hd95, normalized_surface_dice, score_case
from covlight.metrics.masks import as_masks
from covlight.metrics.surfel_normals import NORMALS_EIGHTHS
from covlight.metrics.surfels import surfel_area_table

SPACINGS = (0.5, 0.6, 0.7, 0.8, 1.0, 1.25, 2.5, 5.0)
KINDS = ("blob", "blob2d", "thin", "voxel", "border", "coarse")


def random_case(kind: str, rng: np.random.Generator, max_size: int = 24):
    """(pred, gt, spacing, tolerance), both masks non-empty."""
    ndim = 2 if kind == "blob2d" else 3
    shape = tuple(int(n) for n in rng.integers(4, max_size, ndim))
    spacing = tuple(float(s) for s in rng.choice(SPACINGS, ndim))
    if kind == "coarse":
        spacing = (*spacing[:2], 5.0)

    def blob():
        field = ndimage.gaussian_filter(rng.normal(size=shape), rng.uniform(0.7, 3.0))
        mask = field > np.quantile(field, rng.uniform(0.5, 0.97))
        if kind == "border":  # fill a face of the array so the shape touches the border
            mask[(slice(None),) * int(rng.integers(ndim)) + (-int(rng.integers(2)),)] = True
        return mask

    def thin():  # one-voxel-thick lines and planes
        mask = np.zeros(shape, bool)
        for _ in range(int(rng.integers(1, 4))):
            index = [slice(None)] * ndim
            for axis in rng.choice(ndim, int(rng.integers(1, ndim + 1)), replace=False):
                index[axis] = int(rng.integers(shape[axis]))
            mask[tuple(index)] = True
        return mask

    def voxels():  # a few single voxels
        mask = np.zeros(shape, bool)
        count = int(rng.integers(1, 4))
        mask[tuple(rng.integers(0, n, count) for n in shape)] = True
        return mask

    make = {"thin": thin, "voxel": voxels}.get(kind, blob)
    pred, gt = make(), make()
    if not pred.any() or not gt.any():
        return random_case(kind, rng, max_size)
    # a multiple of a spacing (ties at the tolerance) or a whole number of mm, as the benchmark uses
    tolerance = float(rng.choice([0.0, 1.0, 2.0, 3.0, spacing[0] * int(rng.integers(1, 4))]))
    return pred, gt, spacing, tolerance


def reference_nsd(pred, gt, spacing, tolerance):
    return sd.compute_surface_dice_at_tolerance(sd.compute_surface_distances(gt, pred, spacing), tolerance)


def check_against_oracles(cases):
    for pred, gt, spacing, tolerance in cases:
        assert dice(pred, gt) == pytest.approx(sd.compute_dice_coefficient(gt, pred), abs=1e-12)
        assert normalized_surface_dice(pred, gt, spacing, tolerance) == pytest.approx(
            reference_nsd(pred, gt, spacing, tolerance), abs=1e-6)
        assert hd95(pred, gt, spacing) == pytest.approx(medpy_binary.hd95(pred, gt, voxelspacing=spacing), abs=1e-6)
        assert assd(pred, gt, spacing) == pytest.approx(medpy_binary.assd(pred, gt, voxelspacing=spacing), abs=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_matches_surface_distance_and_medpy(kind):
    rng = np.random.default_rng(KINDS.index(kind))
    check_against_oracles([random_case(kind, rng) for _ in range(40)])  # 240 cases in all


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_matches_oracles_larger_sweep(kind):
    rng = np.random.default_rng(100 + KINDS.index(kind))
    check_against_oracles([random_case(kind, rng, max_size=64) for _ in range(150)])


def test_cpu_tensors_are_scored_as_numpy_views_without_a_copy():
    pred, gt = torch.zeros(4, 5, dtype=torch.bool), torch.ones(4, 5, dtype=torch.bool)
    p, g = as_masks(pred, gt)
    assert isinstance(p, np.ndarray) and np.shares_memory(p, pred.numpy()) and np.shares_memory(g, gt.numpy())


def test_torch_path_equals_numpy_path(monkeypatch):
    # CPU tensors are scored by numpy; keep them tensors here so that the torch path (an accelerator's) runs
    monkeypatch.setattr("covlight.metrics.masks.host_views", lambda pred, gt: (pred, gt))
    rng = np.random.default_rng(7)
    for kind in KINDS:
        for _ in range(8):
            pred, gt, spacing, tolerance = random_case(kind, rng)
            tp, tg = torch.from_numpy(pred), torch.from_numpy(gt)
            assert isinstance(as_masks(tp, tg)[0], torch.Tensor)
            assert dice(tp, tg) == dice(pred, gt)
            assert normalized_surface_dice(tp, tg, spacing, tolerance) == normalized_surface_dice(
                pred, gt, spacing, tolerance)
            assert hd95(tp, tg, spacing) == hd95(pred, gt, spacing)
            assert assd(tp, tg, spacing) == assd(pred, gt, spacing)


def test_ties_at_the_tolerance_count():
    gt = np.zeros((12, 12, 12), bool)
    gt[3:9, 3:9, 3:9] = True
    pred = np.roll(gt, 2, axis=2)  # faces 2 voxels apart: exactly 1.0 mm at 0.5 mm spacing
    spacing = (0.8, 0.7, 0.5)
    assert normalized_surface_dice(pred, gt, spacing, 1.0) == pytest.approx(reference_nsd(pred, gt, spacing, 1.0))
    assert normalized_surface_dice(pred, gt, spacing, 1.0) > normalized_surface_dice(pred, gt, spacing, 0.999)
    assert normalized_surface_dice(gt, gt, spacing, 0.0) == 1.0


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("as_tensor", [False, True])
def test_empty_mask_rules(ndim, as_tensor):
    empty = np.zeros((6,) * ndim, bool)
    full = empty.copy()
    full[(slice(2, 4),) * ndim] = True
    if as_tensor:
        empty, full = torch.from_numpy(empty), torch.from_numpy(full)
    spacing = (1.0,) * ndim
    for metric in (dice, lambda p, g: normalized_surface_dice(p, g, spacing, 1.0)):
        assert math.isnan(metric(empty, empty))
        assert metric(full, empty) == 0.0 and metric(empty, full) == 0.0
    for metric in (hd95, assd):
        assert math.isnan(metric(empty, empty, spacing))
        assert metric(full, empty, spacing) == math.inf and metric(empty, full, spacing) == math.inf


def test_surfel_tables_match_surface_distance():
    normals = [[[value / 8 for value in normal] for normal in code] for code in NORMALS_EIGHTHS]
    assert normals == [[list(map(float, normal)) for normal in code]
                       for code in lookup_tables._NEIGHBOUR_CODE_TO_NORMALS]
    for spacing in [(1.0, 1.0, 1.0), (0.7, 0.7, 2.5), (0.8, 0.6, 5.0)]:
        np.testing.assert_allclose(surfel_area_table(spacing),
                                   lookup_tables.create_table_neighbour_code_to_surface_area(spacing), rtol=1e-15)
    for spacing in [(1.0, 1.0), (0.7, 2.5)]:
        np.testing.assert_allclose(surfel_area_table(spacing),
                                   lookup_tables.create_table_neighbour_code_to_contour_length(spacing), rtol=1e-15)


def test_inputs_are_checked_and_converted():
    a = np.zeros((5, 5, 5), np.uint8)
    a[1:3, 1:3, 1:3] = 7  # any non-zero value is foreground
    assert dice(a, a > 0) == 1.0
    assert dice(torch.from_numpy(a), a.astype(bool)) == 1.0  # numpy joins the tensor's device
    assert normalized_surface_dice(a[:, ::-1], a[:, ::-1], (1, 1, 1), 1) == 1.0  # negative strides
    with pytest.raises(ValueError, match="shape"):
        dice(a, a[:4])
    with pytest.raises(ValueError, match="spacing"):
        normalized_surface_dice(a, a, (1.0, 1.0), 1.0)
    with pytest.raises(ValueError, match="tolerance"):
        normalized_surface_dice(a, a, (1.0, 1.0, 1.0), -1.0)
    with pytest.raises(ValueError, match="2D or 3D"):
        dice(a[None], a[None])


def test_structures_are_the_benchmarks():
    assert list(STRUCTURES) == ["left_lung", "right_lung", "infection"]
    assert [(s.label, s.tolerance_mm, s.dsc_column, s.nsd_column) for s in STRUCTURES.values()] == [
        (1, 1.0, "L-lungDSC", "L-lung-1mm"), (2, 1.0, "R-lungDSC", "R-lung-1mm"),
        (3, 3.0, "LesionDSC", "LesionNSD-3mm")]


def test_score_case():
    rng = np.random.default_rng(3)
    gt = rng.integers(0, 4, (16, 16, 8)).astype(np.uint8)
    gt = ndimage.median_filter(gt, size=3)
    pred = np.roll(gt, 1, axis=0)
    spacing = (0.8, 0.8, 2.5)
    row = score_case(pred, gt, spacing)
    assert list(row) == ["L-lungDSC", "L-lung-1mm", "R-lungDSC", "R-lung-1mm", "LesionDSC", "LesionNSD-3mm"]
    for structure in STRUCTURES.values():
        p, g = pred == structure.label, gt == structure.label
        assert row[structure.dsc_column] == dice(p, g)
        assert row[structure.nsd_column] == pytest.approx(reference_nsd(p, g, spacing, structure.tolerance_mm))
    assert list(score_case(pred, gt, spacing, structures=["infection", "left_lung"])) == [
        "L-lungDSC", "L-lung-1mm", "LesionDSC", "LesionNSD-3mm"]
    assert score_case(torch.from_numpy(pred), torch.from_numpy(gt), spacing) == row
    benchmark = score_case((pred == 3).astype(np.uint8), (gt == 3).astype(np.uint8), spacing,
                           structures=["infection"], labels={"infection": 1})
    assert benchmark == {key: row[key] for key in ("LesionDSC", "LesionNSD-3mm")}
    with pytest.raises(ValueError, match="unknown structure"):
        score_case(pred, gt, spacing, structures=["liver"])
    with pytest.raises(ValueError, match="shape"):
        score_case(pred[:-1], gt, spacing)

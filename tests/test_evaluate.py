"""`python -m covlight.evaluate` reproduces a reference CSV computed here with surface-distance directly."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import surface_distance as sd
from medpy.metric import binary as medpy_binary
from scipy import ndimage

from covlight.evaluate import main

SPACINGS = {"case_a": (0.8, 0.8, 2.5), "case_b": (0.7, 0.75, 5.0), "case_c": (1.0, 0.9, 1.25)}
ALL = ["L-lungDSC", "L-lung-1mm", "R-lungDSC", "R-lung-1mm", "LesionDSC", "LesionNSD-3mm"]


def phantom_labels(shape, rng, lesions: bool) -> np.ndarray:
    """Two rough lobes (1 left at low x, 2 right) and, optionally, lesions (3) inside them."""
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    rough = ndimage.gaussian_filter(rng.normal(size=shape), 2.0) * 2.0
    labels = np.zeros(shape, np.uint8)
    for value, centre in ((1, -0.45), (2, 0.45)):
        labels[((x - centre) / 0.4) ** 2 + (y / 0.7) ** 2 + (z / 0.8) ** 2 <= 1 + rough] = value
    if lesions:
        spots = ndimage.gaussian_filter(rng.normal(size=shape), 1.5)
        labels[(spots > np.quantile(spots, 0.93)) & (labels > 0)] = 3
    return labels


def perturbed(labels: np.ndarray, rng) -> np.ndarray:
    """A prediction: shifted by one or two voxels, lesions grown, the lungs' rim eroded in places."""
    pred = np.roll(labels, int(rng.choice([-2, -1, 1, 2])), axis=int(rng.integers(3)))
    pred[ndimage.binary_dilation(pred == 3) & (pred > 0)] = 3
    rim = (pred > 0) & ~ndimage.binary_erosion(pred > 0)
    pred[rim & (ndimage.gaussian_filter(rng.normal(size=labels.shape), 1.0) > 0.2)] = 0
    return pred


def save(path: Path, labels: np.ndarray, spacing, dtype=np.uint8) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(labels.astype(dtype), np.diag([*spacing, 1.0])), path)


@pytest.fixture
def folders(tmp_path):
    """Canonical GT + predictions: case_c has no lesion in either (NaN), case_b none predicted (0)."""
    rng = np.random.default_rng(0)
    for case, spacing in SPACINGS.items():
        gt = phantom_labels((36, 32, 14), rng, lesions=case != "case_c")
        pred = perturbed(gt, rng)
        if case == "case_b":
            pred[pred == 3] = 2
        save(tmp_path / "gt" / f"{case}.nii.gz", gt, spacing)
        save(tmp_path / "pred" / f"{case}.nii.gz", pred, spacing, dtype=np.int16)
    return tmp_path


def reference_rows(pred_dir: Path, gt_dir: Path, structures) -> list[dict]:
    """The benchmark script's computation, written out independently: surface-distance on each file pair."""
    rows = []
    for gt_path in sorted(gt_dir.glob("*.nii.gz")):
        gt_nii = nib.load(gt_path)
        spacing = gt_nii.header.get_zooms()
        gt = np.uint8(gt_nii.get_fdata())
        pred = nib.load(pred_dir / gt_path.name).get_fdata()
        row = {}
        for label, tolerance, dsc_column, nsd_column in structures:
            g, p = gt == label, pred == label
            if not g.any() and not p.any():  # surface-distance fails here under NumPy 2: the rules
                row[dsc_column] = row[nsd_column] = math.nan
            elif not g.any() or not p.any():
                row[dsc_column] = row[nsd_column] = 0.0
            else:
                row[dsc_column] = sd.compute_dice_coefficient(g, p)
                row[nsd_column] = sd.compute_surface_dice_at_tolerance(
                    sd.compute_surface_distances(g, p, spacing), tolerance)
        rows.append((gt_path.name, row))
    return rows


CANONICAL = [(1, 1, "L-lungDSC", "L-lung-1mm"), (2, 1, "R-lungDSC", "R-lung-1mm"), (3, 3, "LesionDSC", "LesionNSD-3mm")]


def read_csv(path: Path) -> tuple[list[str], list[dict]]:
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        return reader.fieldnames, list(reader)


def assert_matches(path: Path, reference, names, columns):
    header, rows = read_csv(path)
    assert header == ["Name", *columns]
    assert [row["Name"] for row in rows] == names
    for row, (_, expected) in zip(rows, reference, strict=True):
        for column in columns:
            if math.isnan(expected[column]):
                assert row[column] == ""
            else:
                assert float(row[column]) == pytest.approx(expected[column], abs=1e-9)


def run(*args) -> int:
    return main([str(arg) for arg in args])


def test_canonical_folder_reproduces_reference(folders):
    out = folders / "scores.csv"
    assert run("--pred", folders / "pred", "--gt", folders / "gt", "--out", out, "--workers", 1) == 0
    reference = reference_rows(folders / "pred", folders / "gt", CANONICAL)
    assert_matches(out, reference, list(SPACINGS), ALL)
    rows = read_csv(out)[1]
    assert rows[1]["LesionDSC"] == "0.0" and rows[2]["LesionDSC"] == ""
    assert all(0.2 < float(row[column]) < 0.999 for row in rows for column in ALL[:4])  # not trivial scores
    parallel = folders / "parallel.csv"
    assert run("--pred", folders / "pred", "--gt", folders / "gt", "--out", parallel, "--workers", 2) == 0
    assert parallel.read_text() == out.read_text()
    assert run("--pred", folders / "pred", "--gt", folders / "gt", "--structures", "infection", "left_lung",
               "--out", out, "--workers", 1, "--force") == 0
    assert read_csv(out)[0] == ["Name", "L-lungDSC", "L-lung-1mm", "LesionDSC", "LesionNSD-3mm"]


def test_canonical_dataset_root_scores_annotated_structures(folders):
    root = folders / "mosmed"
    (root / "labels").mkdir(parents=True)
    for path in (folders / "gt").iterdir():
        labels = nib.load(path)
        infection = (np.asarray(labels.dataobj) == 3).astype(np.uint8) * 3
        nib.save(nib.Nifti1Image(infection, labels.affine), root / "labels" / path.name)
    (root / "dataset.json").write_text(json.dumps({"name": "mosmed", "annotated": ["infection"], "cases": {}}))
    out = folders / "mosmed.csv"
    assert run("--pred", folders / "pred", "--gt", root, "--out", out, "--workers", 1) == 0
    reference = reference_rows(folders / "pred", root / "labels", CANONICAL[2:])
    assert_matches(out, reference, list(SPACINGS), ["LesionDSC", "LesionNSD-3mm"])
    assert run("--pred", folders / "pred", "--gt", root / "labels", "--out", out, "--workers", 1, "--force") == 0
    assert read_csv(out)[0] == ["Name", "LesionDSC", "LesionNSD-3mm"]
    assert run("--pred", folders / "pred", "--gt", root, "--structures", "left_lung", "--out", out) == 2


@pytest.mark.parametrize("fmt", ["lung_and_infection", "lung", "infection"])
def test_benchmark_labels_follow_the_script(folders, fmt):
    gt_dir, pred_dir = folders / f"bench_gt_{fmt}", folders / f"bench_pred_{fmt}"
    for path in sorted((folders / "gt").iterdir()):
        spacing = SPACINGS[path.name.split(".")[0]]
        gt = np.asarray(nib.load(path).dataobj)
        pred = np.asarray(nib.load(folders / "pred" / path.name).dataobj)
        if fmt == "lung":
            gt, pred = np.where(gt == 3, 1, gt), np.where(pred == 3, 1, pred)
        elif fmt == "infection":  # the benchmark's infection masks use 1
            gt, pred = (gt == 3).astype(np.uint8), (pred == 3).astype(np.uint8)
        save(gt_dir / path.name, gt, spacing)
        save(pred_dir / path.name, pred, spacing, dtype=np.float32)
    out = folders / f"{fmt}.csv"
    assert run("--pred", pred_dir, "--gt", gt_dir, "--out", out, "--labels", "benchmark", "--workers", 1) == 0
    structures = {"lung_and_infection": CANONICAL, "lung": CANONICAL[:2],
                  "infection": [(1, 3, "LesionDSC", "LesionNSD-3mm")]}[fmt]
    columns = [c for *_, dsc, nsd in structures for c in (dsc, nsd)]
    reference = reference_rows(pred_dir, gt_dir, structures)
    assert_matches(out, reference, [f"{case}.nii.gz" for case in SPACINGS], columns)


def break_case(folders: Path, problem: str) -> str:
    """Damage case_b in one way; returns a phrase the error message must contain."""
    pred, gt = folders / "pred" / "case_b.nii.gz", folders / "gt" / "case_b.nii.gz"
    labels = np.asarray(nib.load(pred).dataobj)
    if problem == "shape":
        save(pred, labels[:-1], SPACINGS["case_b"])
        return "shape"
    if problem == "geometry":
        save(pred, labels, (0.8, 0.75, 5.0))
        return "geometry"
    if problem == "missing prediction":
        pred.unlink()
        return "no prediction"
    if problem == "missing ground truth":
        gt.unlink()
        return "no ground truth"
    if problem == "unreadable":
        pred.write_bytes(b"not a nifti file")
        return "cannot read"
    labels = labels.copy()
    labels[0, 0, 0] = 7
    save(pred, labels, SPACINGS["case_b"])
    return "outside canonical"


PROBLEMS = ["shape", "geometry", "missing prediction", "missing ground truth", "unreadable", "values"]


@pytest.mark.parametrize("problem", PROBLEMS)
def test_errors_name_the_case_and_write_nothing(folders, problem, capsys):
    phrase = break_case(folders, problem)
    out = folders / "scores.csv"
    assert run("--pred", folders / "pred", "--gt", folders / "gt", "--out", out, "--workers", 1) == 1
    message = capsys.readouterr().err
    assert phrase in message and "case_b" in message
    assert not out.exists() and not list(folders.glob(".partial-*"))


@pytest.mark.parametrize(("problem", "workers"), [("unreadable", 2), ("missing prediction", 1)])
def test_keep_going_scores_the_rest(folders, problem, workers, capsys):
    phrase = break_case(folders, problem)
    out = folders / "scores.csv"
    assert run("--pred", folders / "pred", "--gt", folders / "gt", "--out", out, "--keep-going",
               "--workers", workers) == 1
    message = capsys.readouterr().err
    assert "1 case(s) failed" in message and phrase in message
    assert [row["Name"] for row in read_csv(out)[1]] == ["case_a", "case_c"]


def test_cases_selects_a_subset(folders):
    (folders / "pred" / "case_b.nii.gz").unlink()
    out = folders / "scores.csv"
    assert run("--pred", folders / "pred", "--gt", folders / "gt", "--out", out, "--cases", "case_c", "case_a",
               "--workers", 1) == 0
    assert [row["Name"] for row in read_csv(out)[1]] == ["case_a", "case_c"]


def test_usage_errors(folders, capsys):
    assert run("--pred", folders / "nowhere", "--gt", folders / "gt") == 2
    assert run("--pred", folders / "pred", "--gt", folders / "pred", "--labels", "benchmark",
               "--structures", "infection") == 2
    assert run("--pred", folders / "pred", "--gt", folders / "gt", "--cases", "case_z") == 2
    assert "does not exist" in capsys.readouterr().err


def test_existing_csv_is_replaced_only_with_force(folders, capsys):
    out = folders / "scores.csv"
    out.write_text("earlier results\n")
    assert run("--pred", folders / "pred", "--gt", folders / "gt", "--out", out) == 2
    assert f"{out} exists: pass --force" in capsys.readouterr().err
    assert out.read_text() == "earlier results\n"
    assert run("--pred", folders / "pred", "--gt", folders / "gt", "--out", out, "--force") == 0
    assert read_csv(out)[0][0] == "Name"


def test_default_output_and_summary(folders, capsys):
    assert run("--pred", folders / "pred", "--gt", folders / "gt", "--workers", 1) == 0
    assert (folders / "pred.csv").is_file()
    summary = capsys.readouterr().out
    assert "mean ± std" in summary and "LesionNSD-3mm" in summary


def test_phantom_predictions_reproduce_reference_in_both_label_modes(tmp_path):
    """Phantom chest CTs (covlight.phantoms) as ground truth, perturbed copies as predictions."""
    from covlight.data.synthetic import make_phantom

    rng = np.random.default_rng(1)
    names = []
    for case in ("coronacases_001", "radiopaedia_4_85506_1", "coronacases_007"):
        phantom = make_phantom(case, seed=0, size="small")
        save(tmp_path / "gt" / f"{case}.nii.gz", phantom.label, phantom.spacing)
        save(tmp_path / "pred" / f"{case}.nii.gz", perturbed(phantom.label, rng), phantom.spacing)
        names.append(case)
    reference = reference_rows(tmp_path / "pred", tmp_path / "gt", CANONICAL)
    out = tmp_path / "canonical.csv"
    assert run("--pred", tmp_path / "pred", "--gt", tmp_path / "gt", "--out", out, "--workers", 1) == 0
    assert_matches(out, reference, sorted(names), ALL)
    out = tmp_path / "benchmark.csv"
    assert run("--pred", tmp_path / "pred", "--gt", tmp_path / "gt", "--out", out, "--labels", "benchmark",
               "--workers", 1) == 0
    assert_matches(out, reference, [f"{n}.nii.gz" for n in sorted(names)], ALL)


def test_hd95_and_assd_columns_match_medpy(folders):
    """`--metrics dsc,nsd,hd95,assd` adds medpy's HD95 and ASSD per structure, after the benchmark's columns."""
    out = folders / "distances.csv"
    assert run("--pred", folders / "pred", "--gt", folders / "gt", "--out", out, "--workers", 1,
               "--metrics", "assd,dsc,nsd,hd95") == 0
    header, rows = read_csv(out)
    assert header == ["Name", "L-lungDSC", "L-lung-1mm", "L-lungHD95", "L-lungASSD", "R-lungDSC", "R-lung-1mm",
                      "R-lungHD95", "R-lungASSD", "LesionDSC", "LesionNSD-3mm", "LesionHD95", "LesionASSD"]
    for row, case in zip(rows, SPACINGS, strict=True):
        gt_nii = nib.load(folders / "gt" / f"{case}.nii.gz")
        gt, spacing = np.asarray(gt_nii.dataobj), gt_nii.header.get_zooms()
        pred = np.asarray(nib.load(folders / "pred" / f"{case}.nii.gz").dataobj)
        for label, prefix in ((1, "L-lung"), (2, "R-lung"), (3, "Lesion")):
            g, p = gt == label, pred == label
            if not g.any() and not p.any():
                assert row[f"{prefix}HD95"] == row[f"{prefix}ASSD"] == ""  # NaN, as DSC and NSD
            elif not g.any() or not p.any():
                assert row[f"{prefix}HD95"] == row[f"{prefix}ASSD"] == "inf"
            else:
                assert float(row[f"{prefix}HD95"]) == pytest.approx(medpy_binary.hd95(p, g, voxelspacing=spacing),
                                                                    abs=1e-6)
                assert float(row[f"{prefix}ASSD"]) == pytest.approx(medpy_binary.assd(p, g, voxelspacing=spacing),
                                                                    abs=1e-6)
    assert rows[1]["LesionHD95"] == "inf" and rows[2]["LesionHD95"] == ""


def test_unknown_metric_is_refused(folders, capsys):
    with pytest.raises(SystemExit) as exit_:
        run("--pred", folders / "pred", "--gt", folders / "gt", "--metrics", "dsc,hd99")
    assert exit_.value.code == 2 and "dsc,nsd,hd95,assd" in capsys.readouterr().err


def test_evaluate_starts_without_torch():
    """Scoring files needs no torch (3-4 s of every start): importing the command must not load it."""
    code = "import sys, covlight.evaluate; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            cwd=Path(__file__).resolve().parents[1])
    assert result.stdout.strip() == "False"

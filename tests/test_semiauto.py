"""Methods without a network: the classic lung pipeline and the seeded methods, the simulated interaction that
seeds them from the test case's truth, and the walls that keep that truth away from every other method."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from covlight.benchmark import LABELS
from covlight.callbacks.scoring import score_against_truth
from covlight.config import read_status
from covlight.data.canonical import HU_WINDOW, read_nifti, save_nifti
from covlight.data.datamodule import SegmentationDataModule
from covlight.data.interaction import UNSEEDED, SeedingStep, seed_slices
from covlight.data.options import Interaction
from covlight.errors import ConfigError, DatasetError
from covlight.methods.semiauto import (
    ClassicLungSegmentation,
    active_contour_classes,
    at_work_spacing,
    classic_lung_labels,
    random_walker_classes,
)
from covlight.metrics import score_case
from covlight.splits import COVID, official_split
from covlight.train import check_method, run
from tests.helpers.runs import FAST, REPO, TINY_2D, compose_config

ANNOTATED = ("left_lung", "right_lung", "infection")
CASES = ("coronacases_001", "coronacases_002", "coronacases_003", "radiopaedia_4_85506_1")


def case(root: Path, case_id: str):
    """(stored image 0..255, truth, affine, label path) of a phantom case."""
    folder = root / COVID
    image, image_file = read_nifti(folder / "images" / f"{case_id}.nii.gz")
    truth, _ = read_nifti(folder / "labels" / f"{case_id}.nii.gz")
    return (np.asarray(image, np.float32), np.asarray(truth, np.uint8), image_file.affine,
            folder / "labels" / f"{case_id}.nii.gz")


def lung_dsc(prediction: np.ndarray, truth: np.ndarray, affine: np.ndarray, drop=()) -> tuple[float, float]:
    kept = [z for z in range(truth.shape[2]) if z not in drop]
    spacing = tuple(np.sqrt((affine[:3, :3] ** 2).sum(0)))
    row = score_case(prediction[:, :, kept], truth[:, :, kept], spacing, ["left_lung", "right_lung"])
    return row["L-lungDSC"], row["R-lungDSC"]


def test_classic_lung_dsc_floor_on_phantoms(phantom_root):
    """Measured on these 4 small phantoms: left 0.895-0.959, right 0.888-0.962 (mean over the 16 task-1 fold-0 test
    phantoms 0.955 / 0.951); floor 0.85."""
    for case_id in CASES:
        stored, truth, affine, _ = case(phantom_root, case_id)
        hu = HU_WINDOW[0] + stored * (HU_WINDOW[1] - HU_WINDOW[0]) / 255.0
        left, right = lung_dsc(classic_lung_labels(hu, affine), truth, affine)
        assert left > 0.85 and right > 0.85, (case_id, left, right)


def test_classic_lung_finds_the_sides_in_world_coordinates(phantom_root):
    """Mirroring the array and its affine's x axis leaves the world unchanged: the same lungs come out."""
    stored, truth, affine, _ = case(phantom_root, CASES[0])
    hu = HU_WINDOW[0] + stored * (HU_WINDOW[1] - HU_WINDOW[0]) / 255.0
    flipped = affine.copy()
    flipped[0, 0], flipped[0, 3] = -affine[0, 0], affine[0, 3] + affine[0, 0] * (hu.shape[0] - 1)
    labels = classic_lung_labels(hu[::-1], flipped)[::-1]
    assert min(lung_dsc(labels, truth, affine)) > 0.90  # this case: 0.921 / 0.918, as unflipped


def test_classic_lung_refuses_an_image_not_from_hu(phantom_root):
    stored, _, affine, _ = case(phantom_root, CASES[0])
    method = ClassicLungSegmentation([0, 1, 2], "lung")
    batch = {"intensity": "8bit", "dataset": COVID, "case_id": CASES[0]}
    with pytest.raises(DatasetError, match=rf"{COVID}/{CASES[0]}: intensity kind '8bit'.*--intensity hu"):
        method.segment(stored, affine, batch)


@pytest.mark.parametrize(("overrides", "message"), [
    (["method=classic_lung", "subtask=infection"], "segments subtask lung only, not infection: set subtask=lung"),
    (["method=random_walker", "model=unet2d"], "has no network: drop the model="),
    (["method=random_walker", "model.module._target_=covlight.methods.supervised.SupervisedSegmentation"],
     "not a semi-automatic method: the seeds are the test"),
    (["method=random_walker", "data.interaction=null"], "starts from seeds: set data.interaction"),
])
def test_a_method_asked_for_what_it_cannot_do_is_refused(overrides, message):
    with pytest.raises(ConfigError, match=message):
        check_method(compose_config(["task=task1", *overrides]))


def test_methods_compose_with_their_own_name_and_no_network():
    """A sweep over method=supervised,random_walker,... composes each job like this: networks keep theirs."""
    network = compose_config(["task=task1", "method=supervised"])
    walker = compose_config(["task=task1", "method=random_walker", "data.interaction.slices=5"])
    classic = compose_config(["task=task1", "method=classic_lung"])
    assert network.model.name == "unet3d" and "net" in network.model.module
    assert walker.name == "random_walker_slices5" and "net" not in walker.model.module
    assert walker.run_id == "task1/lung/random_walker_slices5/fold0-seed0"
    assert classic.name == "classic_lung" and classic.data.interaction is None


# ------------------------------------------------------------------------------------------------ seeding
def seeding(k: int, mode: str = "slices", label_values=(0, 1, 2)) -> SeedingStep:
    return SeedingStep(Interaction(slices=k, mode=mode, seed=0), list(label_values))


def test_seed_slices_are_evenly_spaced_reproducible_and_hold_the_structures(phantom_root):
    _, truth, _, label_path = case(phantom_root, CASES[0])
    held = np.flatnonzero(np.isin(truth, (1, 2)).any(axis=(0, 1)))
    for k in (1, 3, 5):
        seeds = seeding(k)(COVID, CASES[0], label_path, ANNOTATED)
        again = seeding(k)(COVID, CASES[0], label_path, ANNOTATED)
        assert seeds.slices == again.slices and len(seeds.slices) == k
        runs = np.array_split(held, k)
        assert all(z in run for z, run in zip(seeds.slices, runs, strict=True))
        seeded_z = np.flatnonzero((seeds.markers != UNSEEDED).any(axis=(0, 1)))
        assert list(seeded_z) == sorted(seeds.slices)
        z = seeds.slices[0]
        expected = np.where(np.isin(truth[:, :, z], (1, 2)), truth[:, :, z], 0)
        assert np.array_equal(seeds.markers[:, :, z], expected)
        assert seeds.effort() == {"mode": "slices", "slices": k, "strokes": 0, "seed_slices": list(seeds.slices)}


def test_seed_slices_come_from_the_middle_half_of_each_run():
    """k=1 through 20 slices draws from slices 5-14, never the apex or the base; short runs keep every slice."""
    drawn = {seed_slices(np.arange(20), 1, np.random.default_rng(seed))[0] for seed in range(200)}
    assert drawn == set(range(5, 15))
    assert {seed_slices(np.arange(3), 3, np.random.default_rng(seed)) for seed in range(20)} == {(0, 1, 2)}


def test_scribbles_are_strokes_inside_each_structure(phantom_root):
    _, truth, _, label_path = case(phantom_root, CASES[0])
    seeds = seeding(3, "scribbles")(COVID, CASES[0], label_path, ANNOTATED)
    marked = seeds.markers != UNSEEDED
    assert seeds.strokes >= 3 * 3  # at least one stroke per class (background, two lungs) on each slice
    assert marked.sum() < 0.2 * np.prod(truth.shape[:2]) * 3  # strokes, not filled slices
    lung = np.where(np.isin(truth, (1, 2)), truth, 0)
    assert np.array_equal(seeds.markers[marked], lung[marked])  # each stroke inside its structure


def test_bad_seeding_is_one_clear_error_naming_the_case(phantom_root, tmp_path):
    _, truth, _, label_path = case(phantom_root, CASES[0])
    held = int(np.isin(truth, (1, 2)).any(axis=(0, 1)).sum())
    with pytest.raises(DatasetError, match=rf"{CASES[0]}: data.interaction.slices={held + 1} exceeds the {held} "
                                           rf"slices.*slices<={held}"):
        seeding(held + 1)(COVID, CASES[0], label_path, ANNOTATED)
    with pytest.raises(DatasetError, match=rf"{CASES[0]}: seeds for infection, which {COVID} does not annotate"):
        seeding(1, label_values=(0, 3))(COVID, CASES[0], label_path, ("left_lung", "right_lung"))
    _, _, affine, _ = case(phantom_root, CASES[0])
    lesion_free = tmp_path / "labels" / f"{CASES[0]}.nii.gz"
    save_nifti(lesion_free, np.where(truth == LABELS["infection"], LABELS["left_lung"], truth).astype(np.uint8),
               affine)
    with pytest.raises(DatasetError, match=rf"{CASES[0]}: seeds for infection, which this case's truth lacks"):
        seeding(1, label_values=(0, 3))(COVID, CASES[0], lesion_free, ANNOTATED)


def test_seed_slices_are_left_out_of_the_benchmark_scores(phantom_root):
    _, truth, _, label_path = case(phantom_root, CASES[0])
    prediction = torch.from_numpy(truth.copy())
    prediction[:, :, 3] = 0  # wrong on slice 3 only
    structures = ["left_lung", "right_lung"]
    whole = score_against_truth(prediction, str(label_path), structures, ANNOTATED)
    without = score_against_truth(prediction, str(label_path), structures, ANNOTATED, without_slices=(3,))
    assert whole["L-lungDSC"] < 1.0 and without["L-lungDSC"] == 1.0


# ------------------------------------------------------------------------------------------ seeded methods
def test_random_walker_dsc_floor_on_phantoms(phantom_root):
    """3 seed slices, scored without them. Measured on these 2 small phantoms: lungs 0.935-0.974; floor 0.85."""
    for case_id in CASES[:2]:
        stored, truth, affine, label_path = case(phantom_root, case_id)
        seeds = seeding(3)(COVID, case_id, label_path, ANNOTATED)
        classes = random_walker_classes(stored / 255.0, seeds.markers, affine)
        left, right = lung_dsc(classes.astype(np.uint8), truth, affine, drop=seeds.slices)
        assert left > 0.85 and right > 0.85, (case_id, left, right)


def test_random_walker_beta_is_relative_to_the_image_contrast(phantom_root):
    """The same scan at a quarter of its contrast (as CT in HU beside CLAHE-enhanced 8-bit slices, whose squared
    gradients differ ~30x) gets the same segmentation: beta is relative to the image's mean squared gradient."""
    stored, _, affine, label_path = case(phantom_root, CASES[0])
    seeds = seeding(3)(COVID, CASES[0], label_path, ANNOTATED)
    full = random_walker_classes(stored / 255.0, seeds.markers, affine)
    faint = random_walker_classes(0.4 + 0.25 * stored / 255.0, seeds.markers, affine)
    assert np.mean(full == faint) > 0.999


def test_a_coarser_working_grid_returns_the_scan_grid_and_keeps_the_seeds(phantom_root):
    """work_spacing_mm: a method run on 2x2x1 blocks (here a threshold, to see the resampling alone) comes back on
    the scan's grid, aligned with it (agreeing with the method on the scan's own grid), with the seeds as drawn."""
    stored, _, affine, label_path = case(phantom_root, CASES[0])
    image = stored / 255.0
    seeds = seeding(3)(COVID, CASES[0], label_path, ANNOTATED)
    grids = []

    def threshold(image, markers, grid_affine):
        grids.append((image.shape, markers.shape, tuple(np.round(np.sqrt((grid_affine[:3, :3] ** 2).sum(0)), 3))))
        return np.where(image < 0.45, 1, 0)

    spacing = np.sqrt((affine[:3, :3] ** 2).sum(0))
    fine = at_work_spacing(threshold, image, seeds.markers, affine, None)
    coarse = at_work_spacing(threshold, image, seeds.markers, affine, 2 * spacing[0])
    half = (stored.shape[0] // 2, stored.shape[1] // 2, stored.shape[2])
    assert grids == [(stored.shape, stored.shape, tuple(np.round(spacing, 3))),
                     (half, half, tuple(np.round(spacing * [2, 2, 1], 3)))]
    assert coarse.shape == stored.shape
    seeded = seeds.markers != UNSEEDED
    assert np.array_equal(coarse[seeded], seeds.markers[seeded])
    assert np.mean(coarse[~seeded] == fine[~seeded]) > 0.95


def test_active_contour_dsc_floor_on_phantoms(phantom_root):
    """3 seed slices, scored without them. Measured on these 2 small phantoms: lungs 0.808-0.887; floor 0.70."""
    for case_id in CASES[:2]:
        stored, truth, affine, label_path = case(phantom_root, case_id)
        seeds = seeding(3)(COVID, case_id, label_path, ANNOTATED)
        classes = active_contour_classes(stored / 255.0, seeds.markers, affine)
        left, right = lung_dsc(classes.astype(np.uint8), truth, affine, drop=seeds.slices)
        assert left > 0.70 and right > 0.70, (case_id, left, right)


# --------------------------------------------------------------------------- the truth stays with the seeds
def test_a_network_test_batch_holds_no_truth(phantom_root):
    """What a network's test step receives: the image and its geometry, never the label, its path or seeds."""
    datamodule = SegmentationDataModule(str(phantom_root), official_split("task1", "lung", 0), [0, 1, 2],
                                        spatial_dims=2, patch_size=[32, 32, 1], batch_size=2)
    datamodule.setup("test")
    batch = next(iter(datamodule.test_dataloader()))
    assert set(batch) == {"image", "affine", "intensity", "case_id", "dataset", "image_path", "original_shape",
                          "nearest_axis", "annotated"}
    assert "/labels/" not in batch["image_path"]
    seeded = SegmentationDataModule(str(phantom_root), official_split("task1", "lung", 0), [0, 1, 2],
                                    spatial_dims=2, patch_size=[32, 32, 1], batch_size=2,
                                    interaction={"slices": 1})
    seeded.setup("test")
    assert "seeds" in next(iter(seeded.test_dataloader()))


@pytest.mark.slow
def test_a_network_run_never_sees_the_label(phantom_root, tmp_path, monkeypatch):
    """A whole 2D run: every test batch its test step gets is free of the truth."""
    from covlight.methods.supervised import SupervisedSegmentation

    seen: list[dict] = []
    original = SupervisedSegmentation.test_step

    def recording(self, batch, batch_idx):
        seen.append(batch)
        return original(self, batch, batch_idx)

    monkeypatch.setattr(SupervisedSegmentation, "test_step", recording)
    cfg = compose_config(["task=task1", "subtask=lung", "fold=0", *TINY_2D, *FAST, "logger=none",
                          f"paths.data_dir={phantom_root}", f"paths.output_dir={tmp_path / 'run'}"])
    run(cfg)
    assert len(seen) == 16
    for batch in seen:
        assert not {"label", "label_path", "seeds"} & set(batch)
        assert all("/labels/" not in str(value) for value in batch.values())


def test_classic_lung_runs_as_a_network_run_does(phantom_root, tmp_path):
    """No fit: the test phase writes the run folder under the method's name, metrics.csv and predictions."""
    command = [sys.executable, "-m", "covlight", "task=task1", "subtask=lung", "method=classic_lung", "logger=csv",
               "print_config=false", f"paths.data_dir={phantom_root}", f"paths.output_root={tmp_path}"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, encoding="utf-8", errors="replace", timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = (tmp_path / "task1" / "lung" / "classic_lung" / "fold0-seed0").iterdir()
    assert read_status(run_dir)["state"] == "finished"
    assert not (run_dir / "checkpoints").exists()
    with open(run_dir / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert sorted(r["Name"] for r in rows) == sorted(official_split("task1", "lung", 0).test[COVID])
    assert np.mean([float(r["L-lungDSC"]) for r in rows]) > 0.90
    assert len(list((run_dir / "predictions" / COVID).glob("*.nii.gz"))) == 16


@pytest.mark.slow
def test_random_walker_run_records_the_effort_and_both_scores(phantom_root, tmp_path):
    cfg = compose_config(["task=task1", "subtask=lung", "fold=0", "method=random_walker", "data.interaction.slices=1",
                          "logger=none", "print_config=false", f"paths.data_dir={phantom_root}",
                          f"paths.output_dir={tmp_path / 'run'}"])
    run(cfg)
    run_dir = tmp_path / "run"
    effort = json.loads((run_dir / "annotation.json").read_text())
    assert effort["slices_per_scan"] == 1.0 and len(effort["cases"]) == 16
    with open(run_dir / "metrics.csv") as a, open(run_dir / "metrics_with_seed_slices.csv") as b:
        without, whole = list(csv.DictReader(a)), list(csv.DictReader(b))
    assert [r["Name"] for r in without] == [r["Name"] for r in whole]
    assert all(float(w["L-lungDSC"]) >= float(o["L-lungDSC"]) for w, o in zip(whole, without, strict=True))


@pytest.mark.slow
def test_scribble_mode_from_the_command_line_to_the_report(phantom_root, tmp_path):
    """Scribbles end to end: the run is named for them, records its strokes per case, scores without the seed
    slices, and the report shows its cost (slices and strokes per test scan) on its row."""
    command = [sys.executable, "-m", "covlight", "task=task1", "subtask=lung", "method=random_walker",
               "data.interaction.mode=scribbles", "data.interaction.slices=1", "logger=csv", "print_config=false",
               f"paths.data_dir={phantom_root}", f"paths.output_root={tmp_path / 'outputs'}"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, encoding="utf-8", errors="replace", timeout=1800)
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = (tmp_path / "outputs" / "task1" / "lung" / "random_walker_scribbles1" / "fold0-seed0").iterdir()
    effort = json.loads((run_dir / "annotation.json").read_text())
    assert len(effort["cases"]) == 16
    assert all(entry["mode"] == "scribbles" and entry["slices"] == 1 and entry["strokes"] >= 3
               for entry in effort["cases"].values())  # a stroke at least per class: background and two lungs
    assert effort["strokes_per_scan"] == np.mean([entry["strokes"] for entry in effort["cases"].values()])
    with open(run_dir / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 16 and np.mean([float(r["L-lungDSC"]) for r in rows]) > 0.7
    report = subprocess.run([sys.executable, "-m", "covlight.report", str(tmp_path / "outputs"), "--out",
                             str(tmp_path / "report")], cwd=REPO, capture_output=True, encoding="utf-8", timeout=600)
    assert report.returncode == 0, report.stderr[-3000:]
    markdown = (tmp_path / "report" / "report.md").read_text(encoding="utf-8")
    assert f"| random_walker_scribbles1 | 1 slice, {effort['strokes_per_scan']:.1f} strokes | 0 | 1 | 16 |" in markdown

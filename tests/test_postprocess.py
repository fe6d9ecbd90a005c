"""Largest-component post-processing: nnU-Net v1's result (its own function as the oracle), its decision rule on
validation cases only, and `covlight.predict --postprocess`."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from covlight.postprocess import choose, largest_component, main, parse_spec
from covlight.splits import official_split
from tests.helpers import nnunet_v1 as v1


def blobs(seed: int, shape=(40, 36, 24)) -> np.ndarray:
    """Labels 0..3 in many pieces of every size, some touching only along an edge or a corner."""
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, np.uint8)
    smooth = ndimage.gaussian_filter(rng.normal(size=(3, *shape)), 1.5)
    for value in (1, 2, 3):
        labels[(smooth[value - 1] > 0.12) & (labels == 0)] = value
    return labels


def test_equals_nnunet_v1s_largest_component():
    connected = v1.reference("nnunet.postprocessing.connected_components")
    for seed in range(3):
        labels = blobs(seed)
        assert all(ndimage.label(labels == v)[1] > 3 for v in (1, 2, 3))
        expected, _, _ = connected.remove_all_but_the_largest_connected_component(labels.copy(), [1, 2, 3], 1.0)
        assert np.array_equal(largest_component(labels, [1, 2, 3]), expected)
    only_lungs = largest_component(labels, [1, 2])
    assert np.array_equal(only_lungs == 3, labels == 3)  # infection untouched


def test_connectivity_is_faces_only_and_ties_stay():
    labels = np.zeros((6, 6, 6), np.uint8)
    labels[0, 0, 0] = labels[1, 1, 0] = 1  # touch along an edge only: two components of one voxel, tied
    labels[4:6, 4:6, 4] = 2
    labels[0, 5, 5] = 2
    out = largest_component(labels, [1, 2])
    assert out[0, 0, 0] == out[1, 1, 0] == 1
    assert out[0, 5, 5] == 0 and (out[4:6, 4:6, 4] == 2).all()


def test_spec():
    assert parse_spec("largest_component", ["left_lung", "right_lung", "infection"]) == ["left_lung", "right_lung"]
    assert parse_spec("largest_component:infection", ["infection"]) == ["infection"]
    with pytest.raises(Exception, match="not predicted"):
        parse_spec("largest_component:left_lung", ["infection"])
    with pytest.raises(Exception, match="use largest_component"):
        parse_spec("biggest", ["infection"])


def write_case(folder, case, labels):
    folder.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(labels, np.eye(4)), folder / f"{case}.nii.gz")


def test_the_rule_applies_where_the_mean_dsc_does_not_drop(tmp_path):
    """A stray left-lung island: removing it helps; a second, true lesion: removing it hurts."""
    truth = np.zeros((30, 30, 10), np.uint8)
    truth[2:12, 5:25, 2:8] = 1
    truth[16:28, 5:25, 2:8] = 2
    truth[4:8, 8:12, 3:6] = 3
    truth[20:23, 8:12, 3:6] = 3  # smaller than the first: the rule would remove it
    predicted = truth.copy()
    predicted[0:2, 0:2, 0:2] = 1  # a false positive island of the left lung
    for case in ("a", "b"):
        write_case(tmp_path / "pred", case, predicted)
        write_case(tmp_path / "gt" / "labels", case, truth)
    decision = choose(tmp_path / "pred", tmp_path / "gt", ["a", "b"], ["left_lung", "right_lung", "infection"])
    assert decision["apply"] == ["left_lung", "right_lung"]
    assert decision["structures"]["left_lung"]["mean_dsc_after"] > decision["structures"]["left_lung"][
        "mean_dsc_before"]
    assert decision["structures"]["infection"]["mean_dsc_after"] < decision["structures"]["infection"][
        "mean_dsc_before"]


def finished_run(tmp_path, task, subtask, fold=None, source=None):
    run = tmp_path / "run"
    run.mkdir()
    identity = {"task": task, "subtask": subtask, "fold": fold, "source": source, "variant": "official",
                "name": "x", "seed": 0, "model": "unet3d"}
    (run / "status.json").write_text(json.dumps({"state": "finished", "identity": identity}))
    return run


def test_never_on_test_cases(tmp_path, capsys):
    run = finished_run(tmp_path, "task1", "lung", fold=0)
    args = ["--run", str(run), "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt")]
    assert main(args) == 2 and "give --cases, an inner split" in capsys.readouterr().err
    test_case = official_split("task1", "lung", 0).test["covid19_ct_seg"][0]
    assert main([*args, "--cases", test_case]) == 2
    assert "test cases of" in capsys.readouterr().err
    assert not (run / "postprocessing.json").exists()


def test_task2_decides_on_its_in_domain_validation_list(tmp_path, capsys):
    run = finished_run(tmp_path, "task2", "lung", source="structseg")
    split = official_split("task2", "lung", None, "structseg")
    cases = [c for lists in split.val.values() for c in lists]
    truth = np.zeros((8, 8, 4), np.uint8)
    truth[1:4, 1:7, 1:3], truth[5:7, 1:7, 1:3] = 1, 2
    for case in cases:
        write_case(tmp_path / "pred", case, truth)
        write_case(tmp_path / "gt", case, truth)
    args = ["--run", str(run), "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt")]
    assert main(args) == 0
    decision = json.loads((run / "postprocessing.json").read_text())
    assert decision["cases"] == cases and decision["apply"] == ["left_lung", "right_lung"]
    assert main(args) == 2 and "only with --force" in capsys.readouterr().err


def test_predict_applies_it(tmp_path):
    """A converted (random-weight) nnU-Net v1 model predicts lungs in many pieces; --postprocess keeps the
    largest of each, exactly as largest_component does to the raw prediction."""
    from covlight.convert.__main__ import main as convert
    from covlight.predict import main as predict

    plan = v1.plans(2, [64, 64])
    fold = v1.write_model_folder(tmp_path / "models", plan, v1.v1_network(plan))
    assert convert(["nnunet-v1", str(fold), "--out", str(tmp_path / "run"), "--task", "task1",
                    "--orientation", "LPS"]) == 0
    rng = np.random.default_rng(0)
    hu = ndimage.gaussian_filter(rng.uniform(-1100, 300, size=(64, 64, 4)), 1).astype(np.float32)
    hu[:, :24] = -1000.0  # air, so that the scan passes predict's check of HU
    nib.save(nib.Nifti1Image(hu, np.diag([0.78125, 0.78125, 2.5, 1.0])), tmp_path / "scan.nii.gz")
    common = ["--run", str(tmp_path / "run"), "--input", str(tmp_path / "scan.nii.gz"), "--device", "cpu"]
    assert predict([*common, "--output", str(tmp_path / "raw")]) == 0
    assert predict([*common, "--output", str(tmp_path / "pp"), "--postprocess", "largest_component"]) == 0
    raw = np.asarray(nib.load(tmp_path / "raw" / "scan.nii.gz").dataobj)
    processed = np.asarray(nib.load(tmp_path / "pp" / "scan.nii.gz").dataobj)
    assert any(ndimage.label(raw == v)[1] > 1 for v in (1, 2))
    assert np.array_equal(processed, largest_component(raw, [1, 2]))
    assert not np.array_equal(processed, raw)


def test_a_test_run_scores_and_saves_post_processed_predictions(tmp_path):
    """callbacks.case_scoring.postprocess: the test's prediction is post-processed before it is scored and saved."""
    from types import SimpleNamespace

    import torch

    from covlight.callbacks.scoring import CaseScoring

    truth = np.zeros((30, 30, 10), np.uint8)
    truth[2:12, 5:25, 2:8], truth[16:28, 5:25, 2:8] = 1, 2
    predicted = truth.copy()
    predicted[0:2, 0:2, 0:2] = 1  # an island the post-processing removes
    write_case(tmp_path / "labels", "case", truth)
    write_case(tmp_path / "images", "case", truth.astype(np.float32))
    scoring = CaseScoring(str(tmp_path / "run"), ["left_lung", "right_lung"], [0, 1, 2], overlay_cases=0,
                          postprocess="largest_component")
    trainer = SimpleNamespace(datamodule=SimpleNamespace(label_path=lambda dataset, case: tmp_path / "labels" /
                                                         f"{case}.nii.gz"), is_global_zero=True)
    batch = {"dataset": "d", "case_id": "case", "annotated": ["left_lung", "right_lung"],
             "image_path": str(tmp_path / "images" / "case.nii.gz")}
    scoring.on_test_batch_end(trainer, None, {"prediction": torch.from_numpy(predicted)}, batch, 0)
    assert scoring.results.rows[0]["L-lungDSC"] == 1.0
    saved = np.asarray(nib.load(tmp_path / "run" / "predictions" / "d" / "case.nii.gz").dataobj)
    assert np.array_equal(saved, truth)


def test_the_report_lists_post_processed_runs(tmp_path):
    import yaml

    from covlight.report.__main__ import main as report
    from tests.helpers.run_folders import fake_rows, make_run

    rng = np.random.default_rng(0)
    plain = make_run(tmp_path / "outputs", "unet3d", 0, rows=fake_rows(rng, "unet3d", 0))
    processed = make_run(tmp_path / "outputs", "unet3d_lcc", 0, rows=fake_rows(rng, "unet3d_lcc", 0))
    (processed / "config.yaml").write_text(yaml.safe_dump(
        {"callbacks": {"case_scoring": {"postprocess": "largest_component:left_lung,right_lung"}}}))
    assert report([str(tmp_path / "outputs"), "--out", str(tmp_path / "report")]) == 0
    text = (tmp_path / "report" / "report.md").read_text()
    assert f"- `{processed}`: largest_component:left_lung,right_lung" in text
    assert f"`{plain}`" not in text.split("Post-processed runs", 1)[1].split("##", 1)[0]

"""The slice study's summary (benchmarks/slices_study.py --summary-only) from result files: the paired differences
it reports, and its figure."""

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def slices_study():
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import slices_study
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    return slices_study


def write_result(study, results: Path, arm: str, fold: int, seed: int, per_image: dict[str, float],
                 steps: int = 300) -> None:
    """A result file (batch 8, the study's 300 steps unless said) whose images score the given value on every score."""
    images = [{"case": case, "threshold_dice": value, "hard_dice": value, "dsc": value, "nsd": value}
              for case, value in per_image.items()]
    result = {"images": images, "arm": arm, "fold": fold, "seed": seed, "steps": steps, "batch_size": 8,
              "train_seconds": 10.0, **{key: float(np.mean(list(per_image.values()))) for key in ("threshold_dice", "hard_dice")}}
    path = study.result_file(results, arm, fold, seed, "" if steps == 300 else f"-{steps}steps-batch8")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result))


def test_summary_pairs_images_and_draws_the_figure(slices_study, tmp_path):
    """A summary needs the result files only (not the shared data, nor nnU-Net's environment for its arm); it pairs
    only images both arms scored."""
    results = tmp_path / "results"
    narrow = {0: {"1": 0.5, "2": 0.7}, 1: {"3": 0.4, "4": 0.6}}
    resize = {0: {"1": 0.6, "2": 0.7}, 1: {"3": 0.6}}  # image 4 of fold 1 missing: it is not paired
    for fold, images in narrow.items():
        write_result(slices_study, results, "narrow", fold, 0, images)
    for fold, images in resize.items():
        write_result(slices_study, results, "narrow_resize", fold, 0, images)
    out = tmp_path / "summary.json"
    code = slices_study.main(["--shared", str(tmp_path / "absent"), "--work", str(tmp_path / "work"), "--results",
                              str(results), "--summary-only", "--folds", "0,1,2", "--seeds", "0",
                              "--arms", "narrow,narrow_resize,wide,nnunet_v2", "--out", str(out)])
    assert code == 0
    arms = json.loads(out.read_text())["arms"]
    difference = arms["narrow_resize"]["vs_narrow"]
    assert difference["pairs"] == 3
    assert difference["threshold_dice_difference"] == pytest.approx((0.1 + 0.0 + 0.2) / 3, abs=1e-4)
    assert difference["ci95"][0] <= difference["threshold_dice_difference"] <= difference["ci95"][1]
    assert arms["narrow_resize"]["vs_base"]["arm"] == "narrow"
    assert arms["narrow"]["threshold_dice_mean"] == pytest.approx(0.55, abs=1e-4)
    assert arms["narrow"]["missing"] == ["fold2-seed0"]
    assert arms["wide"]["per_run"] == {}  # no results: in the JSON, left out of the figure
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_recovered_runs_enter_the_means_but_not_the_pairs(slices_study, tmp_path):
    """A run recovered from an older summary (its means and image count, no per-image scores) weighs by its images in
    its seed's threshold-averaged and hard Dice, leaves DSC and NSD unknown, and is paired with nothing."""
    results = tmp_path / "results"
    write_result(slices_study, results, "narrow", 0, 0, {"1": 0.5, "2": 0.7})
    write_result(slices_study, results, "narrow_resize", 0, 0, {"1": 0.7, "2": 0.7})
    recovered = {"images": None, "image_count": 6, "arm": "narrow", "fold": 1, "seed": 0, "steps": 300,
                 "batch_size": 8, "train_seconds": None, "threshold_dice": 0.2, "hard_dice": 0.3}
    slices_study.result_file(results, "narrow", 1, 0, "").write_text(json.dumps(recovered))
    out = tmp_path / "summary.json"
    assert slices_study.main(["--work", str(tmp_path / "work"), "--results", str(results), "--summary-only",
                              "--folds", "0,1", "--arms", "narrow,narrow_resize", "--out", str(out)]) == 0
    narrow = json.loads(out.read_text())["arms"]["narrow"]
    assert narrow["per_seed"]["0"] == {"images": 8, "threshold_dice": pytest.approx((0.5 + 0.7 + 6 * 0.2) / 8, abs=1e-4),
                                       "hard_dice": pytest.approx((0.5 + 0.7 + 6 * 0.3) / 8, abs=1e-4),
                                       "dsc": None, "nsd": None}
    assert narrow["train_seconds_per_fold"] == 10.0  # the recovered run has no time of its own
    resize = json.loads(out.read_text())["arms"]["narrow_resize"]
    assert resize["vs_narrow"]["pairs"] == 2 and resize["vs_narrow"]["threshold_dice_difference"] == pytest.approx(0.1)


def test_quick_check_writes_nothing_beside_the_committed_results(slices_study, tmp_path):
    """`--quick` (a meaningless tiny budget) keeps its result files and summary beside its runs; the study's own
    defaults are the committed ones."""
    quick = slices_study.parse_args(["--quick", "--work", str(tmp_path / "work")])
    assert tmp_path in quick.results.parents and tmp_path in quick.out.parents
    study = slices_study.parse_args([])
    assert study.results == REPO / "benchmarks" / "results" / "slices_study"
    assert study.out == REPO / "benchmarks" / "results" / "slices_study.json"


def test_seed_spread_compares_seeds_on_the_folds_they_share(slices_study, tmp_path):
    """Seed 1 has run fold 0 only: the spread is the two seeds' difference on fold 0, not seed 0's two folds against
    seed 1's one (which here would differ by 0.2 from the folds alone)."""
    results = tmp_path / "results"
    write_result(slices_study, results, "narrow", 0, 0, {"1": 0.6, "2": 0.6})
    write_result(slices_study, results, "narrow", 1, 0, {"3": 0.2, "4": 0.2})
    write_result(slices_study, results, "narrow", 0, 1, {"1": 0.65, "2": 0.65})
    out = tmp_path / "summary.json"
    assert slices_study.main(["--results", str(results), "--summary-only", "--folds", "0,1", "--seeds", "0,1",
                              "--arms", "narrow", "--out", str(out)]) == 0
    narrow = json.loads(out.read_text())["arms"]["narrow"]
    assert narrow["seed_spread_folds"] == [0]
    assert narrow["threshold_dice_seed_spread"] == pytest.approx(0.05, abs=1e-4)
    assert narrow["hard_dice_seed_spread"] == pytest.approx(0.05, abs=1e-4)


def test_a_resumed_run_has_no_training_time_of_its_own(slices_study, tmp_path, monkeypatch):
    """A run that resumes a killed run's checkpoint trains only the rest of its steps: its time must not enter the
    study's seconds per fold (a resumed fold once reported 1561 s for ~2100 s of training); a fresh run is timed."""
    args = SimpleNamespace(threads=1, epochs=12, batches=25, batch_size=8, quick=False, device="cpu")

    def finish(command, **kwargs):
        arm, fold, seed = (next(o.split("=", 1)[1] for o in command if o.startswith(f"{key}="))
                           for key in ("name", "fold", "seed"))
        folder = slices_study.run_folder(tmp_path, arm, int(fold), int(seed)) / "2026-12-06_00-00-01"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "status.json").write_text(json.dumps({"state": "finished"}))

    monkeypatch.setattr(slices_study.subprocess, "run", finish)
    fresh, seconds = slices_study.train(args, tmp_path, "narrow", 0, 0)
    assert isinstance(seconds, float) and seconds >= 0
    assert slices_study.train(args, tmp_path, "narrow", 0, 0) == (fresh, seconds)  # a rerun reads the stored time

    killed = slices_study.run_folder(tmp_path, "narrow", 1, 0) / "2026-12-06_00-00-00" / "checkpoints"
    killed.mkdir(parents=True)
    (killed / "last.ckpt").write_bytes(b"")
    resumed, seconds = slices_study.train(args, tmp_path, "narrow", 1, 0)
    assert seconds is None
    assert json.loads((resumed / "study_seconds.json").read_text()) == {"seconds": None, "resumed": True}
    assert slices_study.train(args, tmp_path, "narrow", 1, 0) == (resumed, None)


def test_nnunet_seeds_train_models_of_their_own_and_resumed_runs_have_no_time(slices_study, tmp_path):
    """The reference arm against a stand-in nnUNetv2_train (a script that logs its arguments and writes the final
    checkpoint where nnU-Net would): a second seed trains its own model instead of finding the first seed's, a rerun
    of a finished fold keeps the time first recorded, and a run continued from a killed one's checkpoint has none."""
    bin_folder = tmp_path / "venv" / "bin"
    bin_folder.mkdir(parents=True)
    (bin_folder / "python").touch()
    calls = tmp_path / "calls.txt"
    trainer = bin_folder / "nnUNetv2_train"
    trainer.write_text(f'#!/bin/sh\necho "$@" >> {calls}\n'
                       'model="$nnUNet_results/Dataset501_CovidSemiSeg/nnUNetTrainer_covlightBudget__nnUNetPlans__2d/'
                       'fold_$3"\nmkdir -p "$model" && touch "$model/checkpoint_final.pth"\n')
    trainer.chmod(0o755)
    work = tmp_path / "work"

    first, first_seconds = slices_study.NnUNetV2(bin_folder / "python", work, "seed0").train(1, 2, 3)
    second, second_seconds = slices_study.NnUNetV2(bin_folder / "python", work, "seed1").train(1, 2, 3)
    assert first != second and (second / "checkpoint_final.pth").is_file()
    assert first_seconds is not None and second_seconds is not None
    assert len(calls.read_text().splitlines()) == 2

    again, again_seconds = slices_study.NnUNetV2(bin_folder / "python", work, "seed0").train(1, 2, 3)
    assert (again, again_seconds) == (first, first_seconds)
    assert len(calls.read_text().splitlines()) == 2  # nothing trained

    killed = slices_study.NnUNetV2(bin_folder / "python", work, "seed2")
    model = killed.results / "Dataset501_CovidSemiSeg" / "nnUNetTrainer_covlightBudget__nnUNetPlans__2d" / "fold_1"
    model.mkdir(parents=True)
    (model / "checkpoint_latest.pth").touch()
    resumed, resumed_seconds = killed.train(1, 2, 3)
    assert resumed == model and resumed_seconds is None
    assert calls.read_text().splitlines()[-1].endswith("--c")


def test_nnunet_pairs_by_image_with_the_mean_over_the_other_arms_seeds(slices_study, tmp_path):
    """nnU-Net's seed only names a repeat, so it pairs by image with each covlight arm's mean over its seeds; two
    covlight arms still pair seed by seed."""
    results = tmp_path / "results"
    write_result(slices_study, results, "nnunet_v2", 0, 0, {"1": 0.5, "2": 0.6})
    write_result(slices_study, results, "resize", 0, 1, {"1": 0.7, "2": 0.7})
    write_result(slices_study, results, "resize", 0, 2, {"1": 0.9, "2": 0.5})
    write_result(slices_study, results, "default", 0, 2, {"1": 0.4, "2": 0.4})
    out = tmp_path / "summary.json"
    assert slices_study.main(["--work", str(tmp_path / "work"), "--results", str(results), "--summary-only",
                              "--folds", "0", "--seeds", "0,1,2", "--arms", "default,resize,nnunet_v2",
                              "--out", str(out)]) == 0
    arms = json.loads(out.read_text())["arms"]
    nnunet = arms["nnunet_v2"]["vs_shipped"]
    assert nnunet["pairs"] == 2  # images 1 and 2, each against resize's mean over seeds 1 and 2 (0.8 and 0.6)
    assert nnunet["threshold_dice_difference"] == pytest.approx(((0.5 - 0.8) + (0.6 - 0.6)) / 2, abs=1e-4)
    assert arms["nnunet_v2"]["vs_default"]["threshold_dice_difference"] == pytest.approx(0.15, abs=1e-4)
    assert arms["resize"]["vs_default"]["pairs"] == 2  # seed 2 only: the seeds both have
    assert arms["resize"]["vs_default"]["threshold_dice_difference"] == pytest.approx(0.3, abs=1e-4)


def test_another_budget_neither_skips_nor_pools_the_studys_results(slices_study, tmp_path, monkeypatch):
    """A rerun skips a result file that exists and resumes a run folder it finds: a longer schedule (a GPU run) whose
    results and runs were named as the 300-step ones would skip every fold and report the 300-step scores as its own."""
    results, source = tmp_path / "results", tmp_path / "shared"
    (source / slices_study.TRAIN_FOLDER / "Imgs").mkdir(parents=True)
    write_result(slices_study, results, "narrow", 0, 0, {"1": 0.5, "2": 0.7})
    started = []
    monkeypatch.setattr(slices_study, "import_data", lambda *args, **kwargs: None)
    monkeypatch.setattr(slices_study, "run_arm", lambda args, work, source, arm, fold, seed: started.append(
        (arm, fold, seed, slices_study.overrides(args, work, arm, fold, seed))))
    study = ["--shared", str(source), "--work", str(tmp_path / "work"), "--results", str(results),
             "--arms", "narrow", "--folds", "0", "--out", str(tmp_path / "summary.json")]

    assert slices_study.main(study) == 0
    assert started == []  # the study's budget: fold 0 seed 0 exists
    assert slices_study.main([*study, "--epochs", "100"]) == 0
    assert [(arm, fold, seed) for arm, fold, seed, _ in started] == [("narrow", 0, 0)]
    assert "name=narrow-2500steps-batch8" in started[0][3]  # its own run folder: never resumes the 300-step run
    narrow = json.loads((tmp_path / "summary.json").read_text())["arms"]["narrow"]
    assert narrow["per_run"] == {} and narrow["missing"] == ["fold0-seed0"]
    assert narrow["other_budgets"] == ["fold0-seed0: 300 steps of batch 8"]
    write_result(slices_study, results, "narrow", 0, 0, {"1": 0.6, "2": 0.9}, steps=2500)
    assert (results / "narrow" / "fold0-seed0-2500steps-batch8.json").is_file()
    assert slices_study.main([*study, "--epochs", "100", "--summary-only"]) == 0
    narrow = json.loads((tmp_path / "summary.json").read_text())["arms"]["narrow"]
    assert narrow["per_run"] == {"fold0-seed0": {"threshold_dice": 0.75, "hard_dice": 0.75}}
    assert narrow["vs_study_budget"]["threshold_dice_difference"] == pytest.approx(0.15)

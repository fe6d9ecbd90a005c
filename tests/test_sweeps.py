"""Hyper-parameter search (Optuna, on a validation score) and the SLURM code path (submitit's local executor)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from covlight.config import read_status
from tests.helpers.runs import FAST, REPO, TINY_2D, TINY_3D


def cli_command(args, tmp_path, fast=FAST):
    return [sys.executable, "-m", "covlight", *args, *TINY_2D, *fast, "logger=none", f"paths.output_root={tmp_path}"]


def run_cli(args, root, tmp_path, fast=FAST):
    env = {**os.environ, "COVLIGHT_DATA": str(root)}
    return subprocess.run(cli_command(args, tmp_path, fast), cwd=REPO, env=env, capture_output=True, encoding="utf-8",
                          errors="replace", timeout=600)


@pytest.mark.slow
def test_optuna_search_optimises_an_inner_validation_score(phantom_root, tmp_path):
    result = run_cli(["hparams_search=optuna", "hydra.sweeper.n_trials=2"], phantom_root, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    (search,) = (tmp_path / "hparams_search").iterdir()
    best = yaml.safe_load((search / "optimization_results.yaml").read_text())
    assert 0.0 <= best["best_value"] <= 1.0
    assert set(best["best_params"]) == {"model.module.optimizer.lr", "data.sampling.foreground_fraction"}
    trials = [d for d in (search / "task1" / "lung" / "unet2d" / "fold0-seed0").iterdir()]
    assert len(trials) == 2 and all(read_status(t)["state"] == "finished" for t in trials)
    assert not (tmp_path / "task1").exists()  # trials live in their search's folder only
    config = yaml.safe_load((trials[0] / "config.yaml").read_text())
    assert config["data"]["validation"]["inner_cases"] == 1 and config["optimized_metric"] == "val/pseudo_dice"


@pytest.mark.slow
def test_optuna_study_in_a_database_continues_after_a_kill(phantom_root, tmp_path):
    """A 2-trial study killed during its second trial and started again with the same command: the study ends
    with 2 finished trials, the first one's training is not run again, and the new trial draws new parameters."""
    import optuna

    storage = f"sqlite:///{tmp_path / 'study.db'}"
    args = ["hparams_search=optuna", "hydra.sweeper.n_trials=2", f"hydra.sweeper.storage={storage}"]

    def trial_folders():
        return sorted((tmp_path / "hparams_search").glob("*/task1/lung/unet2d/fold0-seed0/*"),
                      key=lambda folder: folder.name)  # the runs' timestamps

    def second_trial_running():  # the first trial has then been told to the study
        folders = trial_folders()
        return len(folders) == 2 and read_status(folders[1]).get("state") == "running"

    env = {**os.environ, "COVLIGHT_DATA": str(phantom_root)}
    process = subprocess.Popen(cli_command(args, tmp_path), cwd=REPO, env=env, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    while not second_trial_running():
        assert process.poll() is None and time.monotonic() < deadline, "the study ended before its second trial"
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    first, killed = trial_folders()
    assert read_status(first)["state"] == "finished" and read_status(killed)["state"] == "running"
    first_files = {path: path.stat().st_mtime_ns for path in first.rglob("*")}

    result = run_cli(args, phantom_root, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "1 of 2 trials finished, 1 to run" in result.stdout + result.stderr
    study = optuna.load_study(study_name="task1-lung-unet2d", storage=storage)
    complete = [trial for trial in study.trials if trial.state == optuna.trial.TrialState.COMPLETE]
    assert [trial.number for trial in complete] == [0, 2]  # trial 1 was killed; it stays RUNNING in the study
    assert complete[0].params != complete[1].params
    folders = trial_folders()
    assert folders[:2] == [first, killed] and len(folders) == 3 and read_status(folders[2])["state"] == "finished"
    assert {path: path.stat().st_mtime_ns for path in first.rglob("*")} == first_files
    best = yaml.safe_load((folders[2].parents[4] / "optimization_results.yaml").read_text())
    assert best["best_value"] == max(trial.value for trial in complete)


def test_objective_refuses_a_test_metric(phantom_root, tmp_path):
    result = run_cli(["optimized_metric=test/covid19_ct_seg/left_lung/dsc"], phantom_root, tmp_path)
    assert result.returncode == 2  # a user's mistake
    assert "only validation metrics" in result.stderr


@pytest.mark.slow
def test_submitit_local_launcher_runs_each_job_in_its_run_folder(phantom_root, tmp_path):
    result = run_cli(["-m", "hydra/launcher=local", "seed=0,1"], phantom_root, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    for seed in (0, 1):
        (run_dir,) = (tmp_path / "task1" / "lung" / "unet2d" / f"fold0-seed{seed}").iterdir()
        assert read_status(run_dir)["state"] == "finished" and (run_dir / "metrics.csv").is_file()


@pytest.mark.slow
def test_two_fold_two_model_phantom_sweep_report(phantom_root, tmp_path):
    """A real 2-fold x 2-model sweep on phantoms; the report's numbers are recomputed from the per-case files."""
    import csv

    import numpy as np

    from covlight.report.__main__ import main as report_main

    for model in (TINY_2D, TINY_3D):
        env = {**os.environ, "COVLIGHT_DATA": str(phantom_root)}
        command = [sys.executable, "-m", "covlight", "-m", *model, *FAST, "logger=none", "fold=0,1",
                   f"paths.output_root={tmp_path / 'outputs'}"]
        result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, encoding="utf-8", errors="replace", timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
    assert report_main([str(tmp_path / "outputs"), "--out", str(tmp_path / "report")]) == 0
    with open(tmp_path / "report" / "summary.csv") as handle:
        summary = {(r["name"], r["structure"], r["metric"]): r for r in csv.DictReader(handle)}
    for name in ("unet2d", "unet3d"):
        values = []
        for fold in (0, 1):
            (run_dir,) = (tmp_path / "outputs" / "task1" / "lung" / name / f"fold{fold}-seed0").iterdir()
            with open(run_dir / "metrics.csv") as handle:
                values += [float(r["L-lungDSC"]) for r in csv.DictReader(handle)]
        row = summary[(name, "left_lung", "dsc")]
        assert float(row["mean"]) == pytest.approx(100 * np.mean(values), abs=1e-9)
        assert float(row["std"]) == pytest.approx(100 * np.std(values), abs=1e-9)
        assert int(row["n"]) == 32 and set(row["folds"].split(";")) == {"0", "1"}
    report = (tmp_path / "report" / "report.md").read_text()
    assert "folds 2, 3, 4 missing" in report and (tmp_path / "report" / "boxplot_dsc.png").is_file()


DDP_2_CPU = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.precision=32-true",
             "trainer.max_epochs=1", "+trainer.limit_train_batches=2", "+trainer.limit_val_batches=1"]
FAST_DDP = [o for o in FAST if o != "trainer=debug"]


def assert_one_whole_folder_per_job(tmp_path, result, seeds=(0, 1)) -> list:
    """Each job: one folder, finished, every test case scored once; the sweep's one summary says all finished."""
    import csv

    from covlight.benchmark import METRICS_FILE
    from covlight.splits import COVID, official_split

    assert result.returncode == 0, result.stderr[-3000:]
    folders = []
    for seed in seeds:
        (run_dir,) = (tmp_path / "task1" / "lung" / "unet2d" / f"fold0-seed{seed}").iterdir()
        assert read_status(run_dir)["state"] == "finished"
        with open(run_dir / METRICS_FILE) as handle:
            names = [row["Name"] for row in csv.DictReader(handle)]
        assert sorted(names) == sorted(official_split("task1", "lung", 0).test[COVID])  # once each
        folders.append(run_dir)
    (summary,) = (tmp_path / "sweeps").glob("*.summary.json")
    summary = json.loads(summary.read_text())
    assert summary["failed"] == [] and sorted(summary["finished"]) == sorted(map(str, folders))
    return folders


@pytest.mark.slow
def test_ddp_sweep_gives_one_whole_folder_per_job(phantom_root, tmp_path):
    """`-m` + trainer=ddp: Lightning's workers run their rank 0's job in its folder (no folder, sweep or summary
    of their own), and the sweep's next job starts workers of its own."""
    result = run_cli(["-m", "seed=0,1", *DDP_2_CPU], phantom_root, tmp_path, FAST_DDP)
    for run_dir in assert_one_whole_folder_per_job(tmp_path, result):
        assert "Starting with 2 processes" in (run_dir / "__main__.log").read_text()
        assert (run_dir / "train_ddp_process_1.log").is_file()  # the worker logged in its rank 0's folder


@pytest.mark.slow
def test_submitit_tasks_of_a_job_share_its_folder(phantom_root, tmp_path):
    """hydra.launcher.tasks_per_node=2 (one task per device, as SLURM users run DDP): rank 1 joins the folder rank
    0 claimed, found by the job's id."""
    result = run_cli(["-m", "hydra/launcher=local", "hydra.launcher.tasks_per_node=2", "seed=0,1", *DDP_2_CPU],
                     phantom_root, tmp_path, FAST_DDP)
    for run_dir in assert_one_whole_folder_per_job(tmp_path, result):
        assert read_status(run_dir)["job"].startswith("submitit-")
        assert "Starting with 2 processes" in (run_dir / "__main__.log").read_text()

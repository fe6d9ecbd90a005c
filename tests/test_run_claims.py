"""One claim per run folder, tried with real processes: a live run's folder is refused to a second run (naming its
pid), a killed run's folder is not; runs started at once never share a new folder; a job's DDP workers and cluster
tasks run in their rank 0's folder; combinations that cannot give one whole run are refused at start."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from covlight.cluster import RUN_VARIABLE, JobTasks, check_launch, worker_argv
from covlight.config import LOCK_FILE, claim_run_dir, read_status, release_run_dir, write_status
from covlight.errors import ConfigError
from tests.helpers.runs import FAST, REPO, TINY_2D

CLAIM = """
import sys, time
from pathlib import Path
from covlight.config import claim_run_dir
go, folder, resume, hold = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3] == "resume", float(sys.argv[4])
while not go.exists():
    time.sleep(0.001)
try:
    print(claim_run_dir(folder, resume=resume), flush=True)
except Exception as error:
    print(f"{type(error).__name__}: {error}", flush=True)
time.sleep(hold)
"""


def claimer(go: Path, folder: Path, resume: bool = False, hold: float = 0) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-c", CLAIM, str(go), str(folder), "resume" if resume else "new",
                             str(hold)], cwd=REPO, env=env, stdout=subprocess.PIPE, encoding="utf-8")


def first_line(process: subprocess.Popen) -> str:
    return process.stdout.readline().strip()


def test_runs_started_at_once_never_share_a_new_folder(tmp_path):
    """Four processes claim the same new name (as jobs of one identity started in the same second do)."""
    go, folder = tmp_path / "go", tmp_path / "fold0-seed0" / "2026-01-01_00-00-00"
    processes = [claimer(go, folder) for _ in range(4)]
    time.sleep(3)  # every interpreter has started and waits for the signal
    go.touch()
    claimed = sorted(first_line(p) for p in processes)
    for process in processes:
        process.wait(timeout=60)
    names = ["2026-01-01_00-00-00", "2026-01-01_00-00-00_2", "2026-01-01_00-00-00_3", "2026-01-01_00-00-00_4"]
    assert claimed == [str(folder.parent / name) for name in names]
    assert all(read_status(Path(path))["state"] == "running" for path in claimed)


def test_a_live_runs_folder_is_refused_naming_its_pid_and_a_killed_runs_is_not(tmp_path):
    go, folder = tmp_path / "go", tmp_path / "run"
    go.touch()
    folder.mkdir()
    write_status(folder, "failed")  # an unfinished run: resume=auto picks it
    holder = claimer(go, folder, resume=True, hold=600)
    try:
        assert first_line(holder) == str(folder)
        second = claimer(go, folder, resume=True)
        assert first_line(second) == (f"ConfigError: {folder} is in use by process {holder.pid} (it holds "
                                      f"{folder / LOCK_FILE}): wait for that run to end or stop it, or pass "
                                      "resume_busy=new to train in a new folder")
        second.wait(timeout=60)
        with pytest.raises(ConfigError, match=f"in use by process {holder.pid}"):
            claim_run_dir(folder, resume=True)
        new = claim_run_dir(folder, resume=True, if_busy="new")  # the user asked for a new folder
        assert new.parent == tmp_path and new != folder and read_status(new)["state"] == "running"
        release_run_dir(new)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert (folder / LOCK_FILE).read_text().strip() == str(holder.pid)  # the stale lock file stays...
    assert claim_run_dir(folder, resume=True) == folder  # ...and never blocks the resume
    assert (folder / LOCK_FILE).read_text().strip() == str(os.getpid())
    release_run_dir(folder)


def test_a_ddp_worker_runs_its_rank_0s_job_in_rank_0s_folder(monkeypatch):
    sweep = ["-m", "--config-dir=/my/recipes", "seed=0,1", "model=unet2d", 'hydra.run.dir="/elsewhere"',
             "hydra.job.name=train_ddp_process_1", "hydra.output_subdir=null"]  # as Lightning starts a worker
    monkeypatch.setenv(RUN_VARIABLE, json.dumps({"run_dir": "/out/a b/2026", "overrides": ["seed=1", "model=unet2d"]}))
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert worker_argv(sweep) == ["--config-dir=/my/recipes", "seed=1", "model=unet2d",
                                  'hydra.run.dir="/out/a b/2026"', "hydra.job.name=train_ddp_process_1"]
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert worker_argv(sweep) is None  # rank 0 itself
    monkeypatch.delenv(RUN_VARIABLE)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert worker_argv(sweep) is None  # a process some other launcher started


@pytest.mark.parametrize(("trainer", "tasks", "launcher", "message"), [
    ({"strategy": "auto", "devices": 1}, 2, None, "this job runs 2 processes"),
    ({"strategy": "ddp", "devices": 4}, 2, None, "trainer.devices=<tasks per node>"),
    ({"strategy": "ddp", "devices": 2}, 1, "hydra_plugins.hydra_joblib_launcher.JoblibLauncher",
     "inside a joblib sweep"),
])
def test_combinations_that_cannot_give_one_run_are_refused(trainer, tasks, launcher, message):
    cfg = OmegaConf.create({"trainer": {"num_nodes": 1, **trainer}})
    with pytest.raises(ConfigError, match=message):
        check_launch(cfg, JobTasks("submitit-1", 0, tasks), launcher)
    check_launch(OmegaConf.create({"trainer": {"strategy": "ddp", "devices": tasks, "num_nodes": 1}}),
                 JobTasks("submitit-1", 0, tasks), None)


@pytest.mark.slow
def test_two_resume_auto_runs_at_once_one_takes_the_folder(phantom_root, tmp_path):
    folder = tmp_path / "task1" / "lung" / "unet2d" / "fold0-seed0" / "2026-01-01_00-00-00"
    folder.mkdir(parents=True)
    write_status(folder, "failed")
    env = {**os.environ, "COVLIGHT_DATA": str(phantom_root)}
    command = [sys.executable, "-m", "covlight", *TINY_2D, *[o for o in FAST if o != "trainer=debug"], "logger=none",
               "trainer.max_epochs=4", "+trainer.limit_val_batches=1", "resume=auto", f"paths.output_root={tmp_path}"]
    runs = [subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             encoding="utf-8") for _ in range(2)]
    errors = [run.communicate(timeout=600)[1] for run in runs]
    codes = sorted((run.returncode, run.pid, error) for run, error in zip(runs, errors, strict=True))
    (won, winner, _), (lost, _, error) = codes
    assert (won, lost) == (0, 2), error[-3000:]
    assert f"{folder} is in use by process {winner}" in error and "Traceback" not in error
    assert read_status(folder)["state"] == "finished" and len(list(folder.parent.iterdir())) == 1

"""Interrupted work and determinism: a training killed with SIGKILL resumes (resume=auto, or ckpt_path= its last
checkpoint) to the same per-case metrics as an uninterrupted run; the same seed gives the same metrics; checkpoints load with weights_only."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from covlight.config import read_status
from tests.helpers.runs import FAST, REPO, TINY_2D

COMMON = [*TINY_2D, *[o for o in FAST if o != "trainer=debug"], "trainer.deterministic=true", "trainer.max_epochs=3",
          "data.sampling.batches_per_epoch=12", "+trainer.limit_val_batches=1"]


def command(output_root: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "covlight", *COMMON, f"paths.output_root={output_root}", *extra]


def single_run(output_root: Path) -> Path:
    (run_dir,) = (output_root / "task1" / "lung" / "unet2d" / "fold0-seed0").iterdir()
    return run_dir


@pytest.fixture
def env(phantom_root):
    return {**os.environ, "COVLIGHT_DATA": str(phantom_root)}


@pytest.mark.slow
def test_same_seed_same_metrics_and_killed_run_resumes_to_them(env, tmp_path):
    for name in ("a", "b"):
        done = subprocess.run(command(tmp_path / name, "logger=none"), cwd=REPO, env=env, capture_output=True,
                              encoding="utf-8", errors="replace", timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
    reference = (single_run(tmp_path / "a") / "metrics.csv").read_text()
    assert (single_run(tmp_path / "b") / "metrics.csv").read_text() == reference  # determinism

    killed = subprocess.Popen(command(tmp_path / "k", "logger=wandb"), cwd=REPO, env=env, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not list((tmp_path / "k").glob("**/checkpoints/last.ckpt")):
        assert killed.poll() is None and time.monotonic() < deadline, "no checkpoint before the run ended"
        time.sleep(0.05)
    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait()
    run_dir = single_run(tmp_path / "k")
    assert read_status(run_dir)["state"] == "running", "the run finished before it could be killed"
    assert not (run_dir / "metrics.csv").exists()
    checkpoint = tmp_path / "killed-last.ckpt"
    shutil.copyfile(run_dir / "checkpoints" / "last.ckpt", checkpoint)

    resumed = subprocess.run(command(tmp_path / "k", "logger=wandb", "resume=auto"), cwd=REPO, env=env,
                             capture_output=True, encoding="utf-8", errors="replace", timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert single_run(tmp_path / "k") == run_dir  # continued in its own folder
    assert read_status(run_dir)["state"] == "finished"
    assert (run_dir / "metrics.csv").read_text() == reference
    wandb_id = read_status(run_dir)["wandb_id"]
    offline_runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline_runs) == 2 and all(path.name.endswith(wandb_id) for path in offline_runs)

    explicit = subprocess.run(command(tmp_path / "e", "logger=none", f"ckpt_path={checkpoint}"), cwd=REPO, env=env,
                              capture_output=True, encoding="utf-8", errors="replace", timeout=600)
    assert explicit.returncode == 0, explicit.stderr[-3000:]
    assert (single_run(tmp_path / "e") / "metrics.csv").read_text() == reference

    again = subprocess.run(command(tmp_path / "k", "logger=none", "resume=auto"), cwd=REPO, env=env,
                           capture_output=True, encoding="utf-8", errors="replace", timeout=600)
    assert again.returncode == 0
    assert len(list((tmp_path / "k" / "task1" / "lung" / "unet2d" / "fold0-seed0").iterdir())) == 2  # new folder


@pytest.mark.slow
def test_checkpoints_hold_plain_containers(env, tmp_path):
    done = subprocess.run(command(tmp_path, "logger=none", "trainer.max_epochs=1"), cwd=REPO, env=env,
                          capture_output=True, encoding="utf-8", errors="replace", timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    checkpoint = torch.load(single_run(tmp_path) / "checkpoints" / "last.ckpt", weights_only=True)
    assert "state_dict" in checkpoint and "hyper_parameters" not in checkpoint

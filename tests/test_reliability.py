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

MAX_EPOCHS = 6
COMMON = [*TINY_2D, *[o for o in FAST if o != "trainer=debug"], "trainer.deterministic=true",
          f"trainer.max_epochs={MAX_EPOCHS}",
          "data.sampling.batches_per_epoch=12", "+trainer.limit_val_batches=1"]


WORKERS = "data.sampling.num_workers=2"  # loader workers kept between epochs (persistent_workers)


def command(output_root: Path, *extra: str) -> list[str]:
    """The run's command; a `data.sampling.num_workers=...` in `extra` replaces the common one."""
    common = [o for o in COMMON if not (o.startswith("data.sampling.num_workers=")
                                        and any(e.startswith("data.sampling.num_workers=") for e in extra))]
    return [sys.executable, "-m", "covlight", *common, f"paths.output_root={output_root}", *extra]


def single_run(output_root: Path) -> Path:
    (run_dir,) = (output_root / "task1" / "lung" / "unet2d" / "fold0-seed0").iterdir()
    return run_dir


@pytest.fixture
def env(phantom_root):
    return {**os.environ, "COVLIGHT_DATA": str(phantom_root)}


def checkpoint_epoch(path: Path) -> int | None:
    """The epoch a checkpoint was written at, or None while there is none (last.ckpt is replaced atomically, so a
    file that exists is whole)."""
    return torch.load(path, map_location="cpu", weights_only=True)["epoch"] if path.is_file() else None


def same_final_weights(run_a: Path, run_b: Path) -> bool:
    """The two runs' last checkpoints hold bitwise-equal weights (the metrics of these tiny runs are all 0, so only
    the weights tell whether two runs trained on the same patches)."""
    a, b = (torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
            for run in (run_a, run_b))
    return a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)


def start(output_root: Path, env: dict, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(command(output_root, *extra), cwd=REPO, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def kill_when(process: subprocess.Popen, ready, what: str, timeout: float = 300) -> None:
    """SIGKILL the run's whole process group (loader workers included) as soon as `ready()` holds."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert process.poll() is None, f"the run ended before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def resume(output_root: Path, env: dict, *extra: str) -> subprocess.CompletedProcess:
    done = subprocess.run(command(output_root, "resume=auto", *extra), cwd=REPO, env=env, capture_output=True,
                          encoding="utf-8", errors="replace", timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.mark.slow
def test_same_seed_same_metrics_and_killed_run_resumes_to_them(env, tmp_path):
    for name in ("a", "b"):
        done = subprocess.run(command(tmp_path / name, "logger=none"), cwd=REPO, env=env, capture_output=True,
                              encoding="utf-8", errors="replace", timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
    reference = (single_run(tmp_path / "a") / "metrics.csv").read_text()
    assert (single_run(tmp_path / "b") / "metrics.csv").read_text() == reference  # determinism

    # Killed while training: the kill lands after epoch 1's checkpoint and before the last epoch's.
    root = tmp_path / "k"
    parent = root / "task1" / "lung" / "unet2d" / "fold0-seed0"
    last = lambda: next(parent.glob("*/checkpoints/last.ckpt"), Path("absent"))  # noqa: E731
    kill_when(start(root, env, "logger=wandb"), lambda: (checkpoint_epoch(last()) or 0) >= 1, "epoch 1 ended")
    run_dir = single_run(root)
    killed_at = checkpoint_epoch(last())
    assert 0 < killed_at < MAX_EPOCHS - 1, f"killed at epoch {killed_at}: not mid-training"
    assert read_status(run_dir)["state"] == "running"
    assert not (run_dir / "metrics.csv").exists()
    checkpoint = tmp_path / "killed-last.ckpt"
    shutil.copyfile(last(), checkpoint)

    # Killed again during the test phase of the resumed run (training over, first prediction written).
    resumed = start(root, env, "logger=wandb", "resume=auto")
    kill_when(resumed, lambda: next(run_dir.glob("predictions/*/*.nii.gz"), None) is not None, "the test phase")
    assert checkpoint_epoch(last()) == MAX_EPOCHS - 1
    assert read_status(run_dir)["state"] == "running" and not (run_dir / "metrics.csv").exists()

    done = resume(root, env, "logger=wandb")
    assert f"resuming {run_dir} from epoch {MAX_EPOCHS - 1}" in done.stderr + done.stdout
    assert single_run(root) == run_dir  # continued in its own folder
    assert read_status(run_dir)["state"] == "finished"
    assert (run_dir / "metrics.csv").read_text() == reference
    assert same_final_weights(run_dir, single_run(tmp_path / "a"))
    assert not list((run_dir / "checkpoints").glob(".partial-*")), "a killed write's temporary file was left"
    wandb_id = read_status(run_dir)["wandb_id"]
    offline_runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline_runs) == 3 and all(path.name.endswith(wandb_id) for path in offline_runs)

    explicit = subprocess.run(command(tmp_path / "e", "logger=none", f"ckpt_path={checkpoint}"), cwd=REPO, env=env,
                              capture_output=True, encoding="utf-8", errors="replace", timeout=600)
    assert explicit.returncode == 0, explicit.stderr[-3000:]
    assert f"from epoch {killed_at}," in explicit.stderr + explicit.stdout
    assert (single_run(tmp_path / "e") / "metrics.csv").read_text() == reference

    resume(root, env, "logger=none")  # a finished run is never touched: a new folder
    assert len(list(parent.iterdir())) == 2


@pytest.mark.slow
def test_killed_run_with_persistent_loader_workers_resumes_to_the_uninterrupted_metrics(env, tmp_path):
    """Loader workers kept from epoch to epoch learn each epoch's number, so a run resumed with fresh workers draws
    the patches the uninterrupted run drew."""
    done = subprocess.run(command(tmp_path / "a", "logger=none", WORKERS), cwd=REPO, env=env, capture_output=True,
                          encoding="utf-8", errors="replace", timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    reference = (single_run(tmp_path / "a") / "metrics.csv").read_text()
    root = tmp_path / "k"
    parent = root / "task1" / "lung" / "unet2d" / "fold0-seed0"
    last = lambda: next(parent.glob("*/checkpoints/last.ckpt"), Path("absent"))  # noqa: E731
    kill_when(start(root, env, "logger=none", WORKERS), lambda: (checkpoint_epoch(last()) or 0) >= 1,
              "epoch 1 ended")
    killed_at = checkpoint_epoch(last())
    assert 0 < killed_at < MAX_EPOCHS - 1, f"killed at epoch {killed_at}: not mid-training"
    resume(root, env, "logger=none", WORKERS)
    assert (single_run(root) / "metrics.csv").read_text() == reference
    assert same_final_weights(single_run(root), single_run(tmp_path / "a"))


@pytest.mark.slow
def test_damaged_last_checkpoint_is_one_clear_error(env, tmp_path):
    root = tmp_path / "k"
    kill_when(start(root, env, "logger=none"),
              lambda: next(root.glob("**/checkpoints/last.ckpt"), None) is not None, "the first checkpoint")
    last = next(root.glob("**/checkpoints/last.ckpt"))
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])  # a checkpoint truncated before this fix
    done = subprocess.run(command(root, "logger=none", "resume=auto"), cwd=REPO, env=env, capture_output=True,
                          encoding="utf-8", errors="replace", timeout=600)
    assert done.returncode != 0
    assert f"{last} is damaged or not a checkpoint" in done.stderr and "Delete it" in done.stderr
    assert "Traceback" not in done.stderr and "PytorchStreamReader" not in done.stderr.split("damaged")[0]


@pytest.mark.slow
def test_checkpoints_hold_plain_containers(env, tmp_path):
    done = subprocess.run(command(tmp_path, "logger=none", "trainer.max_epochs=1"), cwd=REPO, env=env,
                          capture_output=True, encoding="utf-8", errors="replace", timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    checkpoint = torch.load(single_run(tmp_path) / "checkpoints" / "last.ckpt", weights_only=True)
    assert "state_dict" in checkpoint and "hyper_parameters" not in checkpoint

"""Train + test end to end on tiny phantoms: 2D in-process (what the logger receives), 3D through the CLI."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from lightning.pytorch.loggers.logger import Logger

from covlight.config import read_status
from covlight.data.datamodule import SegmentationDataModule
from covlight.errors import DatasetError
from covlight.splits import COVID, Split, official_split
from covlight.train import run
from tests.helpers.runs import FAST, REPO, TINY_2D, TINY_3D, compose_config


class CaptureLogger(Logger):
    """Records what covlight hands an experiment logger."""

    def __init__(self):
        super().__init__()
        self.hyperparams: dict = {}
        self.metrics: dict = {}

    @property
    def name(self):
        return "capture"

    @property
    def version(self):
        return 0

    def log_hyperparams(self, params, *args, **kwargs):
        self.hyperparams.update(params)

    def log_metrics(self, metrics, step=None):
        self.metrics.update(metrics)


def read_metrics(path: Path) -> list[dict]:
    with open(path) as handle:
        return list(csv.DictReader(handle))


def test_2d_train_test_writes_one_row_per_test_case(phantom_root, tmp_path, monkeypatch):
    capture = CaptureLogger()
    monkeypatch.setattr("covlight.train.instantiate", _instantiate_with(capture))
    cfg = compose_config(["task=task1", "subtask=lung_infection", "fold=1", *TINY_2D, *FAST, "logger=csv",
                          "callbacks.whole_case_validation.every_n_epochs=1",
                          f"paths.data_dir={phantom_root}", f"paths.output_dir={tmp_path / 'run'}"])
    summary = run(cfg)["test"]
    run_dir = tmp_path / "run"
    rows = read_metrics(run_dir / "metrics.csv")
    expected = official_split("task1", "lung_infection", 1).test[COVID]
    assert sorted(row["Name"] for row in rows) == sorted(expected)
    assert list(rows[0]) == ["Name", "dataset", "L-lungDSC", "L-lung-1mm", "R-lungDSC", "R-lung-1mm",
                             "LesionDSC", "LesionNSD-3mm"]
    for row in rows:
        for column in ("L-lungDSC", "R-lungDSC"):
            assert 0.0 <= float(row[column]) <= 1.0
    assert read_status(run_dir)["state"] == "finished"
    assert (run_dir / "config.yaml").is_file()
    assert len(list((run_dir / "predictions" / COVID).glob("*.nii.gz"))) == len(expected)
    # what the logger was handed: the flattened resolved config and per-structure test means
    assert capture.hyperparams["task/name"] == "task1" and capture.hyperparams["fold"] == 1
    assert capture.hyperparams["model/module/net/features_per_stage"] == [8, 16, 32]
    logged = capture.metrics[f"test/{COVID}/left_lung/dsc"]
    assert math.isclose(logged, summary[COVID]["L-lungDSC"]["mean"], rel_tol=1e-6)
    for structure in ("left_lung", "right_lung", "infection"):
        assert f"test/{COVID}/{structure}/nsd" in capture.metrics
    assert "val/pseudo_dice" in capture.metrics
    assert 0.0 <= capture.metrics[f"val_cases/{COVID}/infection/nsd"] <= 1.0  # task 1: training cases only


def _instantiate_with(capture: CaptureLogger):
    from hydra.utils import instantiate

    def patched(config, *args, **kwargs):
        if kwargs.get("logger") is not None and config.get("_target_", "").endswith("Trainer"):
            kwargs["logger"] = [*kwargs["logger"], capture] if kwargs["logger"] else [capture]
        return instantiate(config, *args, **kwargs)

    return patched


def test_3d_cli_run_with_offline_wandb(phantom_root, tmp_path):
    env = {**os.environ, "COVLIGHT_DATA": str(phantom_root)}
    command = [sys.executable, "-m", "covlight", "task=task1", "subtask=lung", "fold=0", *TINY_3D, *FAST,
               f"paths.output_root={tmp_path}"]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, encoding="utf-8", errors="replace", timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    assert output.count("GPU available") == 1, output  # Lightning's messages once, through Hydra's handlers
    assert "ambiguous collection" not in output and "`IterableDataset` has `__len__`" not in output
    assert "LeafSpec" not in output  # Lightning 2.6 on torch 2.13: nothing a user can act on
    (run_dir,) = (tmp_path / "task1" / "lung" / "unet3d" / "fold0-seed0").iterdir()
    assert read_status(run_dir)["state"] == "finished"
    rows = read_metrics(run_dir / "metrics.csv")
    assert len(rows) == 16
    assert list(rows[0]) == ["Name", "dataset", "L-lungDSC", "L-lung-1mm", "R-lungDSC", "R-lung-1mm"]
    assert len(list((run_dir / "overlays" / COVID).glob("*.png"))) == 3
    (offline,) = (run_dir / "wandb").glob("offline-run-*")
    assert list(offline.glob("run-*.wandb"))
    (table,) = (offline / "files" / "media" / "table" / "test").glob("cases_*.table.json")
    table = json.loads(table.read_text())
    assert table["columns"] == ["Name", "dataset", "L-lungDSC", "L-lung-1mm", "R-lungDSC", "R-lung-1mm"]
    assert sorted(r[0] for r in table["data"]) == sorted(r["Name"] for r in rows)
    assert len(list((offline / "files" / "media" / "images" / "test").glob("overlays_*.png"))) == 3
    sync = subprocess.run([str(Path(sys.executable).parent / "wandb"), "sync", "--dry-run", str(offline)],
                          capture_output=True, encoding="utf-8", errors="replace", env=env, timeout=120)
    assert sync.returncode == 0, sync.stderr


def test_missing_dataset_is_one_clear_error(tmp_path):
    env = {**os.environ, "COVLIGHT_DATA": str(tmp_path / "nowhere")}
    command = [sys.executable, "-m", "covlight", *TINY_2D, *FAST, "logger=none", f"paths.output_root={tmp_path}"]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, encoding="utf-8", errors="replace", timeout=300)
    assert result.returncode == 2
    assert "does not exist" in result.stderr and "covlight.phantoms" in result.stderr
    assert "Traceback" not in result.stderr
    (run_dir,) = (tmp_path / "task1" / "lung" / "unet2d" / "fold0-seed0").iterdir()
    assert read_status(run_dir)["state"] == "failed"
    assert not (run_dir / "metrics.csv").exists()


@pytest.mark.slow
def test_ddp_on_two_cpu_processes_scores_every_case_once(phantom_root, tmp_path):
    """Train + test with DDP (gloo, 2 processes): one run folder; re-testing its checkpoint in 1 process gives
    identical per-case rows."""
    env = {**os.environ, "COVLIGHT_DATA": str(phantom_root)}
    ddp = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.precision=32-true",
           "trainer.max_epochs=1", "+trainer.limit_train_batches=2", "+trainer.limit_val_batches=1"]
    common = [*TINY_3D, *[o for o in FAST if o != "trainer=debug"], "logger=csv"]
    first = subprocess.run([sys.executable, "-m", "covlight", *common, *ddp, f"paths.output_root={tmp_path / 'ddp'}"],
                           cwd=REPO, env=env, capture_output=True, encoding="utf-8", errors="replace", timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    (ddp_run,) = (tmp_path / "ddp" / "task1" / "lung" / "unet3d" / "fold0-seed0").iterdir()
    assert read_status(ddp_run)["state"] == "finished"
    ddp_rows = read_metrics(ddp_run / "metrics.csv")
    assert sorted(row["Name"] for row in ddp_rows) == sorted(official_split("task1", "lung", 0).test[COVID])

    checkpoint = ddp_run / "checkpoints" / "last.ckpt"
    second = subprocess.run([sys.executable, "-m", "covlight", *common, "test_only=true", f"ckpt_path={checkpoint}",
                             f"paths.output_root={tmp_path / 'single'}"],
                            cwd=REPO, env=env, capture_output=True, encoding="utf-8", errors="replace", timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    (single_run,) = (tmp_path / "single" / "task1" / "lung" / "unet3d" / "fold0-seed0").iterdir()
    assert read_metrics(single_run / "metrics.csv") == ddp_rows


def test_unknown_case_in_split_names_the_file_and_fix(phantom_root):
    datamodule = SegmentationDataModule(
        root=str(phantom_root), split=Split(train={COVID: ["coronacases_001", "no_such_case"]}, val={}, test={}),
        label_values=[0, 1, 2], spatial_dims=2, patch_size=[32, 32, 1], batch_size=2)
    with pytest.raises(DatasetError, match=r"dataset.json has no case\(s\) \['no_such_case'\].*covlight.prepare"):
        datamodule.setup("fit")


def test_sweep_goes_on_after_a_failed_job_and_says_why(phantom_root, tmp_path):
    env = {**os.environ, "COVLIGHT_DATA": str(phantom_root)}
    command = [sys.executable, "-m", "covlight", "-m", *TINY_2D, *FAST, "logger=none", "fold=7,0",
               f"paths.output_root={tmp_path}"]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, encoding="utf-8", errors="replace", timeout=600)
    assert result.returncode == 1, result.stderr[-3000:]
    assert "1/2 jobs finished" in result.stderr
    (summary_file,) = (tmp_path / "sweeps").glob("*.summary.json")
    summary = json.loads(summary_file.read_text())
    (failed,) = summary["failed"]
    assert "fold=7" in failed["overrides"] and "official folds [0, 1, 2, 3, 4]" in failed["error"]
    (finished,) = summary["finished"]
    assert "fold0-seed0" in finished and (Path(finished) / "metrics.csv").is_file()

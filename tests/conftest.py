"""Shared fixtures: tiny phantom datasets, a quiet W&B, the real samples when present."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers.runs import REPO

SHARED = Path(os.environ.get("COVLIGHT_SHARED", REPO.parent / "shared"))


@pytest.fixture(autouse=True)
def quiet_wandb(tmp_path_factory, monkeypatch):
    """W&B never phones home in tests and writes only into a temporary folder."""
    folder = tmp_path_factory.mktemp("wandb")
    for name in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_CONFIG_DIR"):
        monkeypatch.setenv(name, str(folder))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")


@pytest.fixture(scope="session")
def phantom_root(tmp_path_factory) -> Path:
    """A datasets root holding 20 small COVID phantoms under the official case names (covid19_ct_seg/)."""
    from covlight.data.synthetic import write_phantom_dataset

    root = tmp_path_factory.mktemp("data")
    write_phantom_dataset(root / "covid19_ct_seg", cases=20, seed=0, size="small", progress=False)
    return root


def shared_folder(name: str, what: str) -> Path:
    """A folder of the shared folder; skips the test when it is absent (CI has it)."""
    folder = SHARED / name
    if not folder.is_dir():
        pytest.skip(f"{what} not found at {folder} (set COVLIGHT_SHARED to the shared folder)")
    return folder


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Real samples (research, non-commercial; never committed)."""
    return shared_folder("data", "real samples")


@pytest.fixture(scope="session")
def shared_benchmark() -> Path:
    """The benchmark's own files: split files and published baselines."""
    return shared_folder("benchmark", "the benchmark's files")

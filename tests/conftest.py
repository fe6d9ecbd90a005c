"""Shared fixtures: composed configs, tiny phantom datasets, a quiet W&B, the real samples when present."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from covlight.config import conf_dir

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("COVLIGHT_SHARED", REPO.parent / "shared"))


@pytest.fixture(autouse=True)
def quiet_wandb(tmp_path_factory, monkeypatch):
    """W&B never phones home in tests and writes only into a temporary folder."""
    folder = tmp_path_factory.mktemp("wandb")
    for name in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_CONFIG_DIR"):
        monkeypatch.setenv(name, str(folder))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")


def compose_config(overrides: list[str], return_hydra_config: bool = False):
    """Compose covlight's config as `python -m covlight` would (experiments group included)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return compose(config_name="config", overrides=overrides, return_hydra_config=return_hydra_config)


@pytest.fixture(scope="session")
def phantom_root(tmp_path_factory) -> Path:
    """A datasets root holding 20 small COVID phantoms under the official case names (covid19_ct_seg/)."""
    from covlight.data.phantoms import write_phantom_dataset

    root = tmp_path_factory.mktemp("data")
    write_phantom_dataset(root / "covid19_ct_seg", cases=20, seed=0, size="small", progress=False)
    return root


@pytest.fixture(scope="session")
def shared_data() -> Path:
    data = SHARED / "data"
    if not data.is_dir():
        pytest.skip(f"real samples not found at {data} (set COVLIGHT_SHARED to the shared folder)")
    return data

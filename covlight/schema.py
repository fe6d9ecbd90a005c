"""Types of the config's keys (Hydra structured configs), so Hydra itself refuses a value of the wrong type.

Each dataclass is stored in Hydra's ConfigStore as `<group>_schema` and the group's YAML files list it first in
their defaults (Hydra's documented "config schema" pattern), e.g. conf/trainer/cpu.yaml:

    defaults:
      - trainer_schema
      - _self_

`trainer.max_epochs=1.5` then stops at composition, before anything starts, with Hydra's own message ("Value '1.5'
of type 'float' could not be converted to Integer, full_key: trainer.max_epochs"). The values and their one-line
docs live in the YAML files; a schema only types the keys (MISSING: the YAML gives the value). A key not in a
schema can still be added from the command line with `+group.key=value`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


@dataclass
class RunSchema:
    """The top-level keys (conf/config.yaml); each group below is typed by its own schema, or not at all."""

    task: Any = MISSING
    source: Any = MISSING
    subtask: Any = MISSING
    model: Any = MISSING
    data: Any = MISSING
    trainer: Any = MISSING
    logger: Any = None
    callbacks: Any = None
    paths: Any = MISSING
    name: str = MISSING
    run_id: str = MISSING
    fold: int | None = MISSING
    seed: int = MISSING
    resume: str | None = MISSING
    resume_busy: str = MISSING
    init_from: str | None = MISSING
    test_only: bool = MISSING
    ckpt_path: str | None = MISSING
    optimized_metric: str | None = MISSING
    print_config: bool = MISSING


@dataclass
class TaskSchema:
    """A benchmark task (conf/task/task*.yaml)."""

    name: str = MISSING
    has_folds: bool = MISSING
    num_folds: int = MISSING
    variant: str = MISSING
    split: Any = MISSING


@dataclass
class CustomTaskSchema:
    """A task of the user's own (conf/task/custom.yaml)."""

    name: str = MISSING
    datasets: list[str] = MISSING
    has_folds: bool = MISSING
    num_folds: int = MISSING
    split_file: str | None = MISSING
    split_seed: int = MISSING
    group_regex: str | None = MISSING
    group_key: str | None = MISSING
    split: Any = MISSING


@dataclass
class ModelSchema:
    """The network and what it is fed (conf/model/); `module` is the LightningModule's own config."""

    name: str = MISSING
    spatial_dims: int = MISSING
    patch_size: list[int] = MISSING
    batch_size: int = MISSING
    module: Any = MISSING


@dataclass
class TrainerSchema:
    """Lightning Trainer arguments (conf/trainer/). Other Trainer arguments: `+trainer.<name>=<value>`."""

    _target_: str = MISSING
    accelerator: str = MISSING
    devices: Any = MISSING  # a number, a list of device indices, or "auto"
    strategy: str = MISSING
    num_nodes: int = MISSING
    sync_batchnorm: bool = MISSING
    use_distributed_sampler: bool = MISSING
    precision: str = MISSING
    max_epochs: int = MISSING
    limit_train_batches: Any = MISSING  # batches (int), a fraction (float), or null for all
    limit_val_batches: Any = MISSING
    limit_test_batches: Any = MISSING
    check_val_every_n_epoch: int | None = MISSING
    num_sanity_val_steps: int = MISSING
    log_every_n_steps: int = MISSING
    gradient_clip_val: float | None = MISSING
    deterministic: Any = MISSING  # true, false, or "warn"
    default_root_dir: str | None = MISSING
    enable_model_summary: bool = MISSING
    enable_checkpointing: bool = MISSING  # false: covlight's callbacks.model_checkpoint writes last.ckpt


def register() -> None:
    """Store the schemas in Hydra's ConfigStore (covlight.config does this when it is imported)."""
    store = ConfigStore.instance()
    store.store(name="config_schema", node=RunSchema)
    store.store(group="task", name="task_schema", node=TaskSchema)
    store.store(group="task", name="custom_task_schema", node=CustomTaskSchema)
    store.store(group="model", name="model_schema", node=ModelSchema)
    store.store(group="trainer", name="trainer_schema", node=TrainerSchema)

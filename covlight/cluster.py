"""Which process of which job this is, so that one job gives one run folder however many processes it has.

A job's processes come from one of two places:
- Lightning's DDP launcher (trainer=ddp on one machine, plain run or `-m` sweep): the job's process is rank 0; it
  claims the run folder, then Lightning starts the other ranks as `python -m covlight ...` with rank 0's command
  line. Rank 0 names its folder and its job's overrides in RUN_VARIABLE first (`lightning_workers_join`), and a
  worker runs exactly that job in that folder (`worker_argv`), never a folder or a sweep of its own.
- the cluster (submitit's launcher with `tasks_per_node > 1`, or `srun` with several tasks): every task composes the
  config itself. Rank 0 claims a folder and records the job's id in its status.json; the other ranks join the
  unfinished folder holding their job's id (covlight.config.run_dir). A requeued job keeps its id, so it resumes into
  its own folder.
"""

from __future__ import annotations

import json
import os
import random
from contextlib import contextmanager
from dataclasses import dataclass

from hydra._internal.utils import get_args_parser
from omegaconf import DictConfig

from covlight.errors import ConfigError

RUN_VARIABLE = "COVLIGHT_DDP_JOB"
# What Lightning's launcher sets in rank 0 for its workers: left set, a second DDP job in the same process (a `-m`
# sweep) would take them for processes started by a cluster and wait for workers nobody starts.
LAUNCHER_VARIABLES = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")


@dataclass(frozen=True)
class JobTasks:
    """This process's place in its job: `key` names the job (None outside a cluster job)."""

    key: str | None = None
    rank: int = 0
    tasks: int = 1
    local_rank: int = 0
    node: int = 0
    executor: str | None = None


def job_tasks() -> JobTasks:
    if os.environ.get("SUBMITIT_EXECUTOR"):
        import submitit

        env = submitit.JobEnvironment()
        return JobTasks(f"submitit-{env.job_id}", env.global_rank, env.num_tasks, env.local_rank, env.node,
                        os.environ["SUBMITIT_EXECUTOR"])
    if "SLURM_PROCID" in os.environ and int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        key = f"slurm-{os.environ.get('SLURM_JOB_ID')}.{os.environ.get('SLURM_STEP_ID', 0)}"
        return JobTasks(key, int(os.environ["SLURM_PROCID"]), int(os.environ["SLURM_NTASKS"]),
                        int(os.environ.get("SLURM_LOCALID", 0)), int(os.environ.get("SLURM_NODEID", 0)), "srun")
    return JobTasks()


def export_distributed_env(job: JobTasks) -> None:
    """Tell Lightning and torch.distributed the tasks submitit's local executor started (SLURM's own variables tell
    Lightning on a cluster): without this, each task would start DDP workers of its own."""
    if job.executor != "local" or job.tasks == 1:
        return
    from lightning.pytorch.utilities import rank_zero_only

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(random.Random(job.key).randint(20000, 60000)),
                      WORLD_SIZE=str(job.tasks), RANK=str(job.rank), LOCAL_RANK=str(job.local_rank),
                      NODE_RANK=str(job.node))
    rank_zero_only.rank = job.rank


def _spawns_workers(trainer: DictConfig) -> bool:
    return str(trainer.get("strategy", "auto")).startswith("ddp") and str(trainer.get("devices", 1)) != "1"


def check_launch(cfg: DictConfig, job: JobTasks, launcher: str | None) -> None:
    """Refuse, before anything starts, a combination of launcher, tasks and trainer that cannot give one whole run."""
    trainer = cfg.trainer
    devices, nodes = trainer.get("devices", 1), int(trainer.get("num_nodes", 1))
    if job.tasks > 1:
        if not str(trainer.get("strategy", "auto")).startswith("ddp") or (
                isinstance(devices, int) and devices * nodes != job.tasks):
            raise ConfigError(
                f"this job runs {job.tasks} processes (the launcher's tasks_per_node x nodes) but trainer "
                f"strategy={trainer.get('strategy')} devices={devices} num_nodes={nodes}: train with trainer=ddp "
                f"trainer.devices=<tasks per node> trainer.num_nodes=<nodes> (one process per device), or set "
                "hydra.launcher.tasks_per_node=1")
    elif launcher and "joblib" in launcher and _spawns_workers(trainer):
        raise ConfigError(
            f"trainer=ddp with devices={devices} inside a joblib sweep: Lightning starts DDP workers as "
            "`python -m covlight`, which a joblib worker cannot do. Run the sweep with the default launcher (jobs one "
            "after another, each on all devices) or hydra/launcher=slurm|local with "
            f"hydra.launcher.tasks_per_node={devices} (one task per device)")


@contextmanager
def lightning_workers_join(run_dir, overrides: list[str]):
    """Rank 0 of a job whose DDP workers Lightning starts: tell them this job's folder and overrides; at the end,
    undo what Lightning's launcher left in this process, so the next job of a `-m` sweep starts its own workers."""
    saved = {name: os.environ.get(name) for name in (RUN_VARIABLE, *LAUNCHER_VARIABLES)}
    os.environ[RUN_VARIABLE] = json.dumps({"run_dir": str(run_dir), "overrides": list(overrides)})
    try:
        yield
    finally:
        import torch.distributed

        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def worker_argv(argv: list[str]) -> list[str] | None:
    """For a DDP worker Lightning started (LOCAL_RANK > 0, RUN_VARIABLE set by its rank 0): the command line of its
    rank 0's job, one run in rank 0's folder, whatever rank 0's own command line was (a `-m` sweep re-run by every
    worker would resolve folders and jobs of its own). None for any other process."""
    local_rank = os.environ.get("LOCAL_RANK", "0")
    if local_rank == "0" or RUN_VARIABLE not in os.environ:
        return None
    job = json.loads(os.environ[RUN_VARIABLE])
    args = get_args_parser().parse_args(argv)
    flags = [f"--{name.replace('_', '-')}={getattr(args, name)}"
             for name in ("config_path", "config_name", "config_dir") if getattr(args, name)]
    run_dir = job["run_dir"].replace("\\", "\\\\").replace('"', '\\"')
    return [*flags, *job["overrides"], f'hydra.run.dir="{run_dir}"', f"hydra.job.name=train_ddp_process_{local_rank}"]

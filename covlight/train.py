"""One run: compose -> check -> train -> test the last checkpoint -> per-case `metrics.csv` in the run folder."""

from __future__ import annotations

import logging
import uuid
import warnings
from contextlib import contextmanager
from pathlib import Path

import lightning.pytorch as pl
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.utils import get_class, instantiate
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from covlight.atomic import write_json, write_text
from covlight.benchmark import ANNOTATION_BUDGET_FILE, METRICS_FILE
from covlight.callbacks.checkpoint import LastCheckpoint, checkpoint_position, load_checkpoint
from covlight.callbacks.scoring import CaseScoring
from covlight.cluster import check_launch, export_distributed_env, job_tasks, lightning_workers_join
from covlight.config import check_combination, claim_run_dir, read_status, release_run_dir, write_status
from covlight.errors import ConfigError, CovlightError, disk_full
from covlight.metrics.results import summary_table

log = logging.getLogger("covlight")


def print_config_tree(cfg: DictConfig) -> None:
    """The composed config as a tree, one branch per group (resolved where it can be)."""
    from rich import print as rich_print
    from rich.syntax import Syntax
    from rich.tree import Tree

    tree = Tree("config", guide_style="dim")
    for key, value in cfg.items():
        branch = tree.add(str(key), style="bold")
        text = OmegaConf.to_yaml(value, resolve=True) if isinstance(value, DictConfig) else str(value)
        branch.add(Syntax(text, "yaml", theme="ansi_dark", background_color="default"))
    rich_print(tree)


def resolved_container(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)


def flatten(mapping: dict, prefix: str = "") -> dict:
    """{"a": {"b": 1}} -> {"a/b": 1}: one column per setting in W&B's run table."""
    flat = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}/"))
        else:
            flat[name] = value
    return flat


def load_initial_weights(module: pl.LightningModule, source: str) -> None:
    """Start from another run's weights: a run folder (its last checkpoint) or a checkpoint file."""
    path = Path(source).expanduser()
    if path.is_dir():
        path = path / "checkpoints" / "last.ckpt"
    if not path.is_file():
        raise ConfigError(f"init_from={source}: no checkpoint at {path}; give a finished run folder or a .ckpt file")
    checkpoint = load_checkpoint(path)
    state = checkpoint.get("state_dict", checkpoint)
    missing, unexpected = module.load_state_dict(state, strict=False)
    log.info("initialised from %s (%d missing, %d unexpected keys)", path, len(missing), len(unexpected))


def instantiate_data(config: DictConfig):
    """The data module (or the method's module); an error of the split it builds (a custom task's split file,
    folds, grouping rule) or of the method's settings is raised as itself, not inside Hydra's
    InstantiationException, so the user sees one clear message."""
    try:
        return instantiate(config)
    except InstantiationException as error:
        cause = error.__cause__
        if isinstance(cause, CovlightError):
            raise cause from None
        raise


def checkpoint_to_resume(cfg: DictConfig, run_dir: Path, last: Path | None, resuming: bool) -> str | None:
    """ckpt_path=, or when resuming (resume=auto, a requeued job) the run folder's last checkpoint; checked readable
    before training starts."""
    if cfg.ckpt_path:
        path = given_checkpoint(cfg)
    elif resuming and last is not None and last.is_file():
        path = last
    else:
        if resuming:
            rank_zero_only(log.info)("no checkpoint yet in %s: training starts from its first epoch", run_dir)
        return None
    epoch, step = checkpoint_position(path)
    rank_zero_only(log.info)("resuming %s from epoch %d, step %d (%s)", run_dir, epoch, step, path)
    return str(path)


def given_checkpoint(cfg: DictConfig) -> Path:
    """The file `ckpt_path=` names, checked to be a training checkpoint (one clear error otherwise)."""
    path = Path(str(cfg.ckpt_path)).expanduser()
    if not path.is_file():
        raise ConfigError(f"ckpt_path={cfg.ckpt_path}: no such file; give a checkpoint file (a run's "
                          "checkpoints/last.ckpt)")
    checkpoint_position(path)
    return path


def run(cfg: DictConfig) -> dict:
    """Train and test one (task, source, subtask, name, fold, seed).

    Returns {"test": per-dataset summary of the test scores, "validation": the last validation metrics}.
    """
    log_lightning_once()
    job = job_tasks()
    export_distributed_env(job)
    check_combination(cfg)
    check_method(cfg)
    check_launch(cfg, job, _hydra_value("launcher._target_"))
    chosen = Path(cfg.paths.output_dir)
    # a requeued cluster job finds its folder by its id (covlight.config.run_dir) and continues it
    resuming = cfg.resume == "auto" or (job.key is not None and read_status(chosen).get("job") == job.key)
    run_dir = rank_zero_only(claim_run_dir)(chosen, resume=resuming, if_busy=cfg.resume_busy, job=job.key) or chosen
    try:
        if run_dir != chosen:
            _move_run(cfg, chosen, run_dir)
        if cfg.print_config:
            rank_zero_only(print_config_tree)(cfg)
        try:
            rank_zero_only(_start_run_folder)(cfg, run_dir)
            with lightning_workers_join(run_dir, _hydra_value("overrides.task") or []):
                summary = _train_and_test(cfg, run_dir, resuming)
        except BaseException as error:
            full = disk_full(error, folder=run_dir)  # one line (which file, how much space) for a full disk anywhere
            rank_zero_only(write_status)(run_dir, "failed", error=f"{type(full or error).__name__}: {full or error}")
            if full is not None:
                raise full from None
            raise
        rank_zero_only(write_status)(run_dir, "finished", metrics=str(run_dir / METRICS_FILE))
    finally:
        release_run_dir(run_dir)
    return summary


def log_lightning_once() -> None:
    """Lightning gives its `lightning` logger a console handler of its own when it is imported, which happens after
    Hydra has set up the root's handlers: each of its messages was printed twice. Where the root has handlers
    (a Hydra run), Lightning's messages go through them only, to the console and the run's log file."""
    if logging.getLogger().handlers:
        logging.getLogger("lightning").handlers.clear()


def _hydra_value(key: str):
    """A key of Hydra's own config (`hydra.<key>`), None outside a Hydra run (a test composing the config)."""
    return OmegaConf.select(HydraConfig.get(), key) if HydraConfig.initialized() else None


def _move_run(cfg: DictConfig, chosen: Path, run_dir: Path) -> None:
    """The claim gave this run another folder than Hydra chose: its outputs, Hydra's record of the job and its log
    file go there."""
    with open_dict(cfg):
        cfg.paths.output_dir = str(run_dir)
    if HydraConfig.initialized():
        runtime = HydraConfig.get().runtime
        with read_write(runtime):
            runtime.output_dir = str(run_dir)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler) and Path(handler.baseFilename).parent == chosen:
            handler.close()  # reopened, in the new folder, at the next line logged
            handler.baseFilename = str(run_dir / Path(handler.baseFilename).name)


def _start_run_folder(cfg: DictConfig, run_dir: Path) -> None:
    config = {k: v for k, v in resolved_container(cfg).items() if k != "hydra"}
    write_text(run_dir / "config.yaml", OmegaConf.to_yaml(config))
    if HydraConfig.initialized():  # what Hydra writes itself before the folder is claimed (conf/hydra/default.yaml)
        hydra_dir = run_dir / ".hydra"
        hydra_dir.mkdir(exist_ok=True)
        OmegaConf.save(cfg, hydra_dir / "config.yaml")
        OmegaConf.save(HydraConfig.instance().cfg, hydra_dir / "hydra.yaml")
        OmegaConf.save(HydraConfig.get().overrides.task, hydra_dir / "overrides.yaml")
    identity = {k: config.get(k) for k in ("name", "fold", "seed")}
    identity.update(task=cfg.task.name, variant=cfg.task.get("variant"), source=cfg.source.name,
                    subtask=cfg.subtask.name, model=cfg.model.name)
    write_status(run_dir, "running", identity=identity)


def wandb_run_id(run_dir: Path) -> str:
    """The W&B run id of this run folder, kept in status.json so a resumed run continues the same W&B run."""
    status = read_status(run_dir)
    if "wandb_id" not in status:
        status["wandb_id"] = uuid.uuid4().hex[:8]
        rank_zero_only(write_status)(run_dir, status.get("state", "running"), wandb_id=status["wandb_id"])
    return status["wandb_id"]


@contextmanager
def warnings_that_do_not_apply_silenced():
    """Lightning's warnings that say nothing a user can act on: the length of an IterableDataset (PatchStream gives
    each loader worker its own share of the epoch, covlight/data/patches.py, so its length is exact), and torch
    2.13's deprecation of the `LeafSpec` that Lightning 2.6 itself builds, once per run."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Your `IterableDataset` has `__len__` defined")
        warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
        yield


def _train_and_test(cfg: DictConfig, run_dir: Path, resuming: bool) -> dict:
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    if cfg.logger and cfg.logger.get("wandb"):
        with open_dict(cfg):
            cfg.logger.wandb.id = wandb_run_id(run_dir)
            cfg.logger.wandb.resume = "allow"
    datamodule = instantiate_data(cfg.data)
    module = instantiate_data(cfg.model.module)
    trains = getattr(module, "trains", True)  # methods without a network (covlight/methods/semiauto.py) do not
    if cfg.init_from:
        load_initial_weights(module, cfg.init_from)
    callbacks = [instantiate(c) for c in (cfg.callbacks or {}).values() if c is not None]
    loggers = [instantiate(c) for c in (cfg.logger or {}).values() if c is not None]
    trainer: pl.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    last = next((c.path for c in callbacks if isinstance(c, LastCheckpoint)), None)
    if trainer.world_size > 1:  # DDP starts every rank from rank 0's weights; each rank draws its own patches
        pl.seed_everything(cfg.seed + trainer.global_rank, workers=True, verbose=False)
    config = flatten({k: v for k, v in resolved_container(cfg).items() if k != "hydra"})
    for logger in trainer.loggers:
        logger.log_hyperparams(config)
    if trains and not cfg.test_only:
        with warnings_that_do_not_apply_silenced():
            trainer.fit(module, datamodule=datamodule, ckpt_path=checkpoint_to_resume(cfg, run_dir, last, resuming),
                        weights_only=True)
    validation = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val")}
    test_checkpoint = None
    if trains and not cfg.test_only and not trainer.fast_dev_run:
        test_checkpoint = last and str(last)  # the last checkpoint, never one chosen on test cases
    elif cfg.test_only and cfg.ckpt_path:
        test_checkpoint = str(given_checkpoint(cfg))
    with warnings_that_do_not_apply_silenced():
        trainer.test(module, datamodule=datamodule, ckpt_path=test_checkpoint, weights_only=True)
    budget = getattr(datamodule, "annotation_budget", None)
    if trains and budget is not None:  # what the training labels cost (README "Annotation-efficiency curves")
        rank_zero_only(write_json)(run_dir / ANNOTATION_BUDGET_FILE, budget())
    scoring = next(c for c in callbacks if isinstance(c, CaseScoring))
    rank_zero_only(print_summary)(scoring.summary, run_dir)
    return {"test": scoring.summary, "validation": validation}


def check_method(cfg: DictConfig) -> None:
    """Before the run folder is claimed: a method without a network gets none, is asked only for the subtasks it
    can do, and seeds (the test case's own truth) go to semi-automatic methods alone, which need them."""
    target = cfg.model.module.get("_target_")
    try:
        method = get_class(target)
    except Exception:  # an unknown class is reported by instantiate, with Hydra's message
        return
    name = method.__name__
    if not getattr(method, "trains", True) and "net" in cfg.model.module:
        raise ConfigError(f"{name} has no network: drop the model=... override (its method chooses model=none)")
    subtasks = getattr(method, "subtasks", None)
    if subtasks is not None and cfg.subtask.name not in subtasks:
        raise ConfigError(f"{name} segments subtask {' or '.join(subtasks)} only, not {cfg.subtask.name}: set "
                          f"subtask={subtasks[0]}, or choose another method")
    interactive = getattr(method, "interactive", False)
    if cfg.data.get("interaction") is not None and not interactive:
        raise ConfigError(f"data.interaction is set, but {name} is not a semi-automatic method: the seeds are the "
                          "test case's own truth. Drop data.interaction")
    if interactive and cfg.data.get("interaction") is None:
        raise ConfigError(f"{name} starts from seeds: set data.interaction (its method config does; a later "
                          "override removed it)")


def print_summary(summary: dict, run_dir: Path) -> None:
    from rich.console import Console

    for dataset, column_stats in summary.items():
        Console().print(summary_table(column_stats, f"test on {dataset} ({run_dir})"))

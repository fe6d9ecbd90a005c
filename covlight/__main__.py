"""`python -m covlight [overrides]`: one run (train, then test); `-m` sweeps."""

from __future__ import annotations

import logging
import os
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

import covlight
from covlight.cluster import worker_argv
from covlight.config import conf_dir
from covlight.errors import ConfigError, CovlightError, report_error
from covlight.sweep import LOG_VARIABLE, record_job_error

log = logging.getLogger("covlight")


@hydra.main(config_path=str(conf_dir()), config_name="config", version_base="1.3")
def _hydra_entry(cfg: DictConfig) -> float | None:
    """One run. In a sweep a failing job is recorded (status.json, the sweep summary) and the sweep goes on."""
    from covlight.train import run

    in_sweep = HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        check_objective_name(cfg)
        result = run(cfg)
        return objective(cfg, result)
    except CovlightError as caught:
        error = unwrapped(caught)
        log.error("%s", error)
        if not in_sweep:
            sys.exit(report_error("covlight", error))
        record_job_error(error)
    except Exception as error:
        if not in_sweep:
            raise
        log.exception("the job failed; the sweep goes on")
        record_job_error(error)
    return None


def unwrapped(error: BaseException) -> BaseException:
    """The error as first raised. One raised in a DataLoader worker comes back with the worker's traceback as its
    message (torch's ExceptionWrapper, which rebuilt it from that one string), the last line `<type>: <message>`."""
    text = str(error)
    if "\nOriginal Traceback" not in text:
        return error
    return type(error)(text.rstrip().splitlines()[-1].partition(": ")[2])


def check_objective_name(cfg: DictConfig) -> None:
    """Refuse, before any training, to optimise anything but a validation metric."""
    name = cfg.get("optimized_metric")
    if name and not str(name).startswith("val"):
        raise ConfigError(f"optimized_metric={name}: only validation metrics (val...) may be optimised")


def objective(cfg: DictConfig, result: dict) -> float | None:
    """The value a hyper-parameter sweeper optimises: a validation metric, never a test score."""
    name = cfg.get("optimized_metric")
    if not name:
        return None
    if name not in result["validation"]:
        raise ConfigError(f"optimized_metric={name} was not logged; logged: {sorted(result['validation'])}")
    return result["validation"][name]


def main() -> None:
    """The `covlight` console script and `python -m covlight`. `--version` is covlight's (Hydra's own flag would
    print Hydra's version)."""
    if "--version" in sys.argv[1:]:
        print(f"covlight {covlight.__version__}")
        return
    worker = worker_argv(sys.argv[1:])
    if worker is not None:  # a DDP worker Lightning started: rank 0's job, in rank 0's folder, recorded by rank 0
        sys.argv[1:] = worker
        os.environ.pop(LOG_VARIABLE, None)
    _hydra_entry()


if __name__ == "__main__":
    main()

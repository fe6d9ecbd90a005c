"""`python -m covlight [overrides]`: one run (train, then test); `-m` sweeps."""

from __future__ import annotations

import logging
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import OverrideType
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from covlight.config import conf_dir
from covlight.errors import ConfigError, CovlightError, report_error
from covlight.sweep import record_job_error

log = logging.getLogger("covlight")


@hydra.main(config_path=str(conf_dir()), config_name="config", version_base="1.3")
def _hydra_entry(cfg: DictConfig) -> float | None:
    """One run. In a sweep a failing job is recorded (status.json, the sweep summary) and the sweep goes on."""
    from covlight.train import run

    in_sweep = HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        check_override_types(cfg)
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


_TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a number"}


def check_override_types(cfg: DictConfig) -> None:
    """Refuse a command-line value of the wrong type (`trainer.max_epochs=abc`) before anything starts.

    The YAML files keep no types, so a text value that replaced a text value in `cfg` is compared with the default
    it replaced, found by composing the config again without those overrides.
    """
    overrides = list(HydraConfig.get().overrides.task)
    texts = {}
    for override in OverridesParser.create().parse_overrides(overrides):
        if override.type == OverrideType.ADD or override.type == OverrideType.DEL or override.package is not None \
                or override.is_sweep_override() or not isinstance(override.value(), str):
            continue
        if isinstance(OmegaConf.select(cfg, override.key_or_group, throw_on_resolution_failure=False), str):
            texts[override.input_line] = override.key_or_group
    if not texts:
        return
    defaults = hydra.compose(config_name="config", overrides=[o for o in overrides if o not in texts])
    problems = []
    for line, key in texts.items():
        default = OmegaConf.select(defaults, key, throw_on_resolution_failure=False)
        if type(default) in _TYPE_NAMES:
            shown = str(default).lower() if isinstance(default, bool) else default
            problems.append(f"{line}: {key} must be {_TYPE_NAMES[type(default)]} (default: {shown})")
    if problems:
        raise ConfigError(f"{'; '.join(problems)}. Fix the value on the command line.")


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
    _hydra_entry()


if __name__ == "__main__":
    main()

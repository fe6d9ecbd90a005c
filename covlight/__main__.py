"""`python -m covlight [overrides]`: one run (train, then test); `-m` sweeps."""

from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig

from covlight.config import conf_dir
from covlight.data.canonical import DatasetError

log = logging.getLogger("covlight")
USER_ERRORS = (DatasetError, ValueError, FileExistsError)


@hydra.main(config_path=str(conf_dir()), config_name="config", version_base="1.3")
def _hydra_entry(cfg: DictConfig) -> None:
    from covlight.train import run

    try:
        run(cfg)
    except USER_ERRORS as error:
        log.error("%s", error)
        print(f"\ncovlight: error: {error}", file=sys.stderr)
        sys.exit(1)


def main() -> None:
    _hydra_entry()


if __name__ == "__main__":
    main()

"""Sweeps: every job runs even when another crashes, and the sweep ends with a summary of what failed and why.

`SweepSummary` is a Hydra callback (conf/hydra/default.yaml). Jobs may run in other processes (joblib, submitit),
so each job appends one JSON line to the sweep's log file, named in an environment variable set when the sweep
starts; the summary reads that file back at the end.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import sys
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from covlight.cluster import job_tasks
from covlight.config import read_status
from covlight.errors import WORK_FAILED

LOG_VARIABLE = "COVLIGHT_SWEEP_LOG"
_job_error: str | None = None


def record_job_error(error: BaseException) -> None:
    """Called by the entry point for an error it handled, so the summary can say why the job failed."""
    global _job_error
    _job_error = f"{type(error).__name__}: {error}"


class SweepSummary(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        stamp = _dt.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
        log = Path(str(config.hydra.sweep.dir)) / "sweeps" / f"{stamp}.jsonl"
        log.parent.mkdir(parents=True, exist_ok=True)
        log.touch()
        os.environ[LOG_VARIABLE] = str(log)

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        global _job_error
        _job_error = None

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        log = os.environ.get(LOG_VARIABLE)
        if not log or job_tasks().rank > 0:  # a job is recorded once, by its rank 0 (covlight.cluster)
            return
        run_dir = Path(str(HydraConfig.get().runtime.output_dir))  # the folder the run claimed (covlight.train)
        status = read_status(run_dir)
        failed = job_return.status == JobStatus.FAILED or status.get("state") != "finished"
        error = _job_error or status.get("error")
        if job_return.status == JobStatus.FAILED and error is None:
            error = f"{type(job_return._return_value).__name__}: {job_return._return_value}"
        record = {
            "job": int(config.hydra.job.num),
            "overrides": list(config.hydra.overrides.task),
            "run_dir": str(run_dir),
            "state": "failed" if failed else "finished",
            "error": error,
        }
        with open(log, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        log = Path(os.environ.get(LOG_VARIABLE, ""))
        if not log.is_file():
            return
        records = sorted((json.loads(line) for line in log.read_text(encoding="utf-8").splitlines() if line.strip()),
                         key=lambda r: r["job"])
        summary = {"jobs": len(records), "failed": [r for r in records if r["state"] != "finished"],
                   "finished": [r["run_dir"] for r in records if r["state"] == "finished"]}
        log.with_suffix(".summary.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
        print_summary(records)
        if summary["failed"]:
            sys.exit(WORK_FAILED)  # a job failed; each was recorded above


def print_summary(records: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    shared = set.intersection(*(set(r["overrides"]) for r in records)) if records else set()
    table = Table(title=f"sweep: {sum(r['state'] == 'finished' for r in records)}/{len(records)} jobs finished")
    for column in ("#", "overrides that vary", "state", "run folder / error"):
        table.add_column(column)
    for record in records:
        detail = record["run_dir"] if record["state"] == "finished" else (record["error"] or "see the run's log")
        style = None if record["state"] == "finished" else "red"
        varying = " ".join(o for o in record["overrides"] if o not in shared)
        table.add_row(str(record["job"]), varying, record["state"], detail, style=style)
    Console(stderr=True).print(table)

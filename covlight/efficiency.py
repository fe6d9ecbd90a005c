"""`python -m covlight.efficiency --out DIR [options] [OVERRIDES...]`: annotation-efficiency curves.

Sweeps the annotation budget of the training cases (`data.sparse_annotation`: labelled cases, annotated axial slices
per case, simulated from full labels), for each method, fold and seed, one covlight run per point, then writes the
report of the runs with the efficiency plot and table (`python -m covlight.report`, section "Annotation efficiency").

  --cases 1,2,3,4          labelled cases (all: every training case of the fold); each with all its slices
  --slices 1,2,5,10,all    annotated slices per case; each on all training cases
  --cross                  every (cases, slices) pair instead of the two sweeps
  --method SPEC            repeatable: a method (conf/method) and, after spaces, overrides of its own, e.g.
                           --method supervised --method "mean_teacher data.unlabelled.datasets=[]"
  --folds 0,1,2,3,4        folds (none: the task's single split)
  --seeds 0,1,2            run seeds; the seed also chooses the labelled cases and (random) slices
  OVERRIDES                covlight overrides common to every run (task=..., subtask=..., model=..., trainer...)

Runs land in DIR/runs/<run id>/ (named `<name>-budget-c<cases>-s<slices>[-<strategy>]`), logs in DIR/logs/, the
report in DIR/report/. Rerunning the same command skips finished runs and continues a killed one (resume=auto), so a
long study may be stopped and restarted. With a semi-supervised method, the training cases left without a label join
its unlabelled pool (data.sparse_annotation.rest_unlabelled). Exit status 1 when a run failed (listed at the end).
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from covlight.config import read_status
from covlight.errors import WORK_FAILED, ConfigError, CovlightError, report_error
from covlight.report.collect import find_run_dirs
from covlight.report.efficiency import budget_name

PROG = "covlight.efficiency"


@dataclass(frozen=True)
class Job:
    method: str
    overrides: tuple[str, ...]  # the method's own
    task: str
    subtask: str
    name: str  # the run's name at this budget
    cases: int | None
    slices: int | None
    fold: int | None
    seed: int

    def label(self) -> str:
        fold = "" if self.fold is None else f" fold {self.fold}"
        return (f"{self.method}: {self.cases or 'all'} cases x {self.slices or 'all'} slices{fold} seed {self.seed}")

    @property
    def identity(self) -> tuple:
        return self.task, self.subtask, self.name, self.fold, self.seed


def _budget_list(text: str, what: str) -> list[int | None]:
    values = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        if item == "all":
            values.append(None)
        elif item.isdigit() and int(item) > 0:
            values.append(int(item))
        else:
            raise argparse.ArgumentTypeError(f"{what} {text!r}: give positive numbers or 'all', e.g. 1,2,5,all")
    return list(dict.fromkeys(values))


def _numbers(text: str) -> list[int]:
    try:
        return sorted({int(v) for v in text.split(",") if v.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give numbers separated by commas, e.g. 0,1,2") from None


def points(cases: list[int | None], slices: list[int | None], cross: bool) -> list[tuple[int | None, int | None]]:
    """The budgets to run: every pair with --cross; otherwise each case count with all slices and each slice count
    on all cases."""
    if cross:
        pairs = [(n, k) for n in cases for k in slices]
    else:
        pairs = [(n, None) for n in cases] + [(None, k) for k in slices]
    big = 10**9
    return sorted(dict.fromkeys(pairs), key=lambda p: (big if p[0] is None else p[0], big if p[1] is None else p[1]))


def identity_of(overrides: list[str]) -> tuple[str, str, str]:
    """(task, subtask, run name) covlight gives these overrides (the name: the recipe's or the model's)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException

    from covlight.config import conf_dir

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
            cfg = compose(config_name="config", overrides=overrides)
            return str(cfg.task.name), str(cfg.subtask.name), str(cfg.name)
    except HydraException as error:
        raise ConfigError(f"the overrides {' '.join(overrides)} do not compose: {error}") from None
    finally:
        GlobalHydra.instance().clear()


def plan(args) -> list[Job]:
    jobs = []
    for spec in args.method or ["supervised"]:
        method, *own = shlex.split(spec)
        task, subtask, name = identity_of([*args.overrides, f"method={method}", *own])
        for cases, slices in points(args.cases, args.slices, args.cross):
            for fold in args.folds or [None]:
                for seed in args.seeds:
                    name_at = budget_name(name, cases, slices, args.strategy)
                    jobs.append(Job(method, tuple(own), task, subtask, name_at, cases, slices, fold, seed))
    return jobs


def finished(runs: Path) -> set[tuple]:
    """(task, subtask, name, fold, seed) of the finished runs under `runs`."""
    done = set()
    for path in find_run_dirs([runs]) if runs.is_dir() else []:
        status = read_status(path)
        identity = status.get("identity") or {}
        if status.get("state") == "finished":
            done.add(tuple(identity.get(key) for key in ("task", "subtask", "name", "fold", "seed")))
    return done


def command(job: Job, args) -> list[str]:
    def null(value):
        return "null" if value is None else str(value)

    return [sys.executable, "-m", "covlight", *args.overrides, f"method={job.method}", *job.overrides,
            *([] if job.fold is None else [f"fold={job.fold}"]), f"seed={job.seed}", f"name={job.name}",
            f"data.sparse_annotation.cases={null(job.cases)}",
            f"data.sparse_annotation.slices_per_case={null(job.slices)}",
            f"data.sparse_annotation.strategy={args.strategy}", f"data.sparse_annotation.seed={job.seed}",
            f"paths.output_root={args.out / 'runs'}", "resume=auto", "print_config=false"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {PROG}", description=__doc__.split("\n\n", 1)[0],
                                     epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="the study's folder")
    parser.add_argument("--cases", type=lambda t: _budget_list(t, "--cases"), default=[None], metavar="N,...")
    parser.add_argument("--slices", type=lambda t: _budget_list(t, "--slices"), default=[None], metavar="K,...")
    parser.add_argument("--cross", action="store_true", help="every (cases, slices) pair")
    parser.add_argument("--strategy", choices=("evenly", "random", "most_foreground"), default="evenly",
                        help="which slices of a case are annotated (data.sparse_annotation.strategy)")
    parser.add_argument("--method", action="append", metavar="SPEC", help="a method and its own overrides")
    parser.add_argument("--folds", type=_numbers, metavar="F,...")
    parser.add_argument("--seeds", type=_numbers, default=[0, 1, 2], metavar="S,...")
    parser.add_argument("--minutes-per-slice", type=float, metavar="M", help="also show minutes at M per slice")
    parser.add_argument("--dry-run", action="store_true", help="print the runs and their state, run nothing")
    parser.add_argument("overrides", nargs="*", help="covlight overrides common to every run")
    args = parser.parse_intermixed_args(argv)
    args.out = args.out.resolve()
    try:
        jobs = plan(args)
    except CovlightError as error:
        return report_error(PROG, error)
    done = finished(args.out / "runs")
    todo = [job for job in jobs if job.identity not in done]
    print(f"{PROG}: {len(jobs)} runs, {len(jobs) - len(todo)} finished earlier, {len(todo)} to run", flush=True)
    if args.dry_run:
        for job in jobs:
            state = "to run" if job in todo else "finished"
            print(f"  {job.label()}: {state}\n    {shlex.join(command(job, args))}")
        return 0
    failed = []
    (args.out / "logs").mkdir(parents=True, exist_ok=True)
    for index, job in enumerate(todo, start=1):
        log = args.out / "logs" / f"{job.name}-fold{job.fold}-seed{job.seed}.log"
        print(f"[{index}/{len(todo)}] {job.label()} (log: {log})", flush=True)
        with open(log, "a") as handle:
            code = subprocess.run(command(job, args), stdout=handle, stderr=subprocess.STDOUT).returncode
        if code != 0:
            failed.append((job, log))
            print(f"  failed (exit status {code}): see {log}", flush=True)
    from covlight.report.__main__ import main as report

    extra = ["--minutes-per-slice", str(args.minutes_per_slice)] if args.minutes_per_slice else []
    status = report([str(args.out / "runs"), "--out", str(args.out / "report"), "--force", *extra])
    for job, log in failed:
        print(f"{PROG}: failed: {job.label()}: {log}", file=sys.stderr)
    return WORK_FAILED if failed or status else 0


if __name__ == "__main__":
    sys.exit(main())

"""Find run folders, keep the finished ones, and read their identity and per-case metrics.

A run folder is one with a `status.json` (written by training: state running | failed | finished, and the
run identity). Only finished runs count; every other folder is listed as skipped, with the reason. A finished
run whose results cannot be used is refused (left out of every table, listed, and the report exits 1): no or an
unreadable `metrics.csv` (one cut off mid-row), a DSC or NSD outside [0, 1], or rows that are not exactly the
cases its split tests (`covlight.splits`, from the task, subtask, fold, source and variant its config.yaml and
status.json name): a file holding 9 of a fold's 16 test cases would otherwise be pooled beside the published
baselines as if complete. A semi-automatic run (its config sets data.interaction) also needs its `annotation.json`
(the slices and strokes drawn per scan, its annotation cost): without it the run is refused too. A custom task's split is made from its dataset folders, which the report does not
read: its rows are checked for range only. Of
several finished runs of one identity (a rerun of the same fold and seed), the newest folder is used and the
others are skipped as superseded. For tasks with folds, the folds (and seeds) a method lacks are listed as
missing.
"""

from __future__ import annotations

import json
import math
import os
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from covlight.benchmark import ANNOTATION_FILE, FOLDS, METRICS_FILE, TASKS, TASKS_WITH_FOLDS, structure_metric
from covlight.config import STATUS_FILE, read_status
from covlight.errors import ConfigError
from covlight.metrics.results import CaseResults
from covlight.splits import official_split

CONFIG_FILE = "config.yaml"
# Folds per task when a run folder has no config.yaml to say so (the official 5 folds; task2 has one split).
DEFAULT_NUM_FOLDS = {task: len(FOLDS) for task in TASKS_WITH_FOLDS}


@dataclass(frozen=True)
class Run:
    """A finished run: its identity, split variant, and per-case rows {"Name", "dataset", column: float}."""

    path: Path
    task: str
    source: str | None
    subtask: str
    name: str
    model: str | None
    fold: int | None
    seed: int
    variant: str
    num_folds: int | None
    cases: tuple[dict, ...]
    postprocess: str | None = None  # callbacks.case_scoring.postprocess of its test: its scores are post-processed
    annotation: dict | None = None  # a semi-automatic run's effort per test scan: mode, slices, strokes

    @property
    def setting(self) -> tuple[str, str | None, str, str]:
        """What makes results comparable: (task, source, subtask, split variant)."""
        return self.task, self.source, self.subtask, self.variant

    @property
    def method(self) -> tuple:
        return (*self.setting, self.name)


@dataclass(frozen=True)
class Skipped:
    path: Path
    reason: str
    refused: bool = False  # a finished run whose results cannot be used (the reason names the file)


@dataclass
class Collection:
    runs: list[Run] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)


def find_run_dirs(paths: Iterable[Path]) -> list[Path]:
    """Every folder holding a status.json at or below `paths` (not descending into a run folder)."""
    found = []
    for root in paths:
        for folder, subfolders, files in os.walk(root):
            if STATUS_FILE in files:
                found.append(Path(folder))
                subfolders.clear()
            else:
                subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
    return sorted(set(found))


def read_run(path: Path) -> Run | Skipped:
    """The finished run in `path`, or why it cannot be used."""
    status = read_status(path)
    state = status.get("state")
    if state != "finished":
        if state == "failed":
            return Skipped(path, f"failed: {status.get('error', 'no error recorded')}")
        return Skipped(path, "running (not finished)" if state == "running" else f"unreadable {STATUS_FILE}")
    identity = status.get("identity") or {}
    lacking = [key for key in ("task", "subtask", "name", "seed") if identity.get(key) is None]
    if lacking:
        return Skipped(path, f"{STATUS_FILE} identity lacks {', '.join(lacking)}")
    metrics = path / METRICS_FILE
    if not metrics.is_file():
        return Skipped(path, f"finished but no {METRICS_FILE}", refused=True)
    try:
        results = CaseResults.read(metrics)
    except (OSError, ValueError) as error:
        message = str(error)
        return Skipped(path, f"unreadable {METRICS_FILE}: {message if str(metrics) in message else f'{metrics}: {message}'}",
                       refused=True)
    cases = results.rows
    if not cases:
        return Skipped(path, f"{METRICS_FILE} has no case rows: {metrics}", refused=True)
    config = read_config(path)
    task_config = config.get("task") if isinstance(config.get("task"), dict) else {}
    problem = out_of_range(results) or not_its_test_cases(cases, identity, task_config, config.get("data"))
    if problem:
        return Skipped(path, f"{metrics}: {problem}", refused=True)
    annotation = None
    if isinstance(config.get("data"), dict) and config["data"].get("interaction"):
        annotation = read_annotation(path)
        if isinstance(annotation, str):
            return Skipped(path, annotation, refused=True)
    fold = identity.get("fold")
    num_folds = None
    if task_config.get("has_folds", identity["task"] in DEFAULT_NUM_FOLDS):
        num_folds = int(task_config.get("num_folds", DEFAULT_NUM_FOLDS.get(identity["task"], 1)))
    return Run(
        path=path,
        task=str(identity["task"]),
        source=identity.get("source"),
        subtask=str(identity["subtask"]),
        name=str(identity["name"]),
        model=identity.get("model"),
        fold=None if fold is None else int(fold),
        seed=int(identity["seed"]),
        variant=str(task_config.get("variant", "official")),
        num_folds=num_folds,
        cases=tuple(cases),
        postprocess=((config.get("callbacks") or {}).get("case_scoring") or {}).get("postprocess"),
        annotation=annotation,
    )


def read_annotation(path: Path) -> dict | str:
    """A semi-automatic run's annotation cost per test scan ({"mode", "slices_per_scan", "strokes_per_scan"}) from
    its annotation.json, or why it cannot be read."""
    file = path / ANNOTATION_FILE
    fix = "test the run again, or remove the run folder"
    try:
        effort = json.loads(file.read_text(encoding="utf-8"))
        modes = {case["mode"] for case in effort["cases"].values()}
        cost = {"slices_per_scan": float(effort["slices_per_scan"]),
                "strokes_per_scan": float(effort["strokes_per_scan"])}
    except FileNotFoundError:
        return f"a semi-automatic run without {file} (its annotation cost): {fix}"
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        return f"unreadable {file} ({type(error).__name__}: {error}): {fix}"
    return {"mode": "/".join(sorted(modes)), **cost}


def read_config(path: Path) -> dict:
    """The run's config.yaml ({} when absent or unreadable)."""
    try:
        config = yaml.safe_load((path / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return {}
    return config if isinstance(config, dict) else {}


def out_of_range(results: CaseResults) -> str | None:
    """Why the scores cannot be a DSC or NSD (a fraction in [0, 1], or empty for NaN), or None when they can."""
    for column in results.columns:
        try:
            metric = structure_metric(column)[1]
        except KeyError:
            continue
        low, high = (0.0, 1.0) if metric in ("dsc", "nsd") else (0.0, float("inf"))
        for row in results.rows:
            value = row[column]
            if not math.isnan(value) and not low <= value <= high:
                allowed = "0..1" if high == 1.0 else "0 or more"
                return (f"{column} of {row['Name']} is {value!r}, outside {allowed}: not a score covlight writes. "
                        "The file was edited or damaged: test the run again, or remove the run folder")
    return None


def expected_test_cases(identity: dict, task_config: dict, data_config) -> tuple[dict[str, list[str]], set[str]] | None:
    """(dataset -> the case ids the run's split tests, the test sets that may be absent) for a benchmark task, as
    training scored them (`data.cases`: in-domain held-out lists included unless test_in_domain is false; an
    optional test set, MosMed by default, absent when not imported); None for a custom task."""
    task = str(identity["task"])
    if task not in TASKS:
        return None
    variant = task_config.get("variant") or identity.get("variant") or "official"
    split = official_split(task, str(identity["subtask"]), identity.get("fold"), identity.get("source"), str(variant))
    cases = data_config.get("cases") if isinstance(data_config, dict) else None
    cases = cases if isinstance(cases, dict) else {}
    lists = dict(split.test)
    if cases.get("test_in_domain", True):
        lists = {**split.val, **lists}
    return lists, set(cases.get("optional_test_sets", ["mosmed"]))


def not_its_test_cases(rows: list[dict], identity: dict, task_config: dict, data_config) -> str | None:
    """Why the rows are not exactly the cases the run's split tests, or None when they are (or cannot be known)."""
    try:
        expected = expected_test_cases(identity, task_config, data_config)
    except ConfigError as error:
        return f"its identity names no split of the benchmark ({error})"
    if expected is None:
        return None
    lists, optional = expected
    found: dict[str, list[str]] = defaultdict(list)
    for row in rows:
        found[row["dataset"]].append(row["Name"])
    label = f"{identity['task']} fold {identity.get('fold')}" if identity.get("fold") is not None else identity["task"]
    fix = ("Test the run again (test_only=true ckpt_path=<its checkpoints/last.ckpt>), or remove the run folder; "
           "a run that skipped cases (data.cases.missing=skip) is not comparable to the published baselines")
    for dataset, ids in found.items():
        if dataset not in lists:
            return f"holds test set {dataset!r}, which {label} does not test. {fix}"
        repeated = sorted({c for c in ids if ids.count(c) > 1})
        extra = [c for c in ids if c not in lists[dataset]]
        problems = [f"case(s) {_few(repeated)} more than once"] if repeated else []
        problems += [f"case(s) {_few(extra)} not in the test cases of {label}"] if extra else []
        if problems:
            return f"{dataset}: {'; '.join(problems)}. {fix}"
    for dataset, ids in lists.items():
        if dataset not in found and dataset in optional:
            continue
        missing = [c for c in ids if c not in found.get(dataset, [])]
        if missing:
            return (f"{len(ids) - len(missing)} of the {len(ids)} {dataset} test cases of {label} (missing "
                    f"{_few(missing)}): an incomplete run, not pooled. {fix}")
    return None


def _few(ids: list[str], count: int = 5) -> str:
    return ", ".join(ids[:count]) + (f" ... (+{len(ids) - count})" if len(ids) > count else "")


def collect(paths: Iterable[Path], progress: Callable[[list], Iterable] = iter) -> Collection:
    """Finished runs under `paths`, what was skipped and why, and what each method lacks.

    `progress` wraps the list of run folders while they are read (e.g. a progress bar).
    """
    collection = Collection()
    newest: dict[tuple, Run] = {}
    for path in progress(find_run_dirs(paths)):
        result = read_run(path)
        if isinstance(result, Skipped):
            collection.skipped.append(result)
            continue
        key = (*result.method, result.fold, result.seed)
        if key in newest:  # run folders are named by their start time: the later name is the newer run
            older, result = sorted((newest[key], result), key=lambda run: (run.path.name, str(run.path)))
            reason = f"superseded by the newer finished run {result.path}"
            collection.skipped.append(Skipped(older.path, reason))
        newest[key] = result
    collection.runs = sorted(newest.values(), key=lambda run: str(run.path))
    collection.missing = missing_runs(collection.runs)
    return collection


def missing_runs(runs: list[Run]) -> list[str]:
    """Per method: the folds it has no finished run of, and the folds that lack a seed other folds have."""
    by_method: dict[tuple, dict[int, set[int]]] = defaultdict(lambda: defaultdict(set))
    num_folds: dict[tuple, int] = {}
    for run in runs:
        if run.num_folds is not None and run.fold is not None:
            by_method[run.method][run.fold].add(run.seed)
            num_folds[run.method] = run.num_folds
    lines = []
    for method, seeds_by_fold in sorted(by_method.items(), key=lambda item: str(item[0])):
        label = method_label(method)
        absent = [fold for fold in range(num_folds[method]) if fold not in seeds_by_fold]
        if absent:
            finished = _plural("fold", sorted(seeds_by_fold))
            lines.append(f"{label}: {_plural('fold', absent)} missing (finished: {finished})")
        all_seeds = set().union(*seeds_by_fold.values())
        for fold, seeds in sorted(seeds_by_fold.items()):
            if seeds != all_seeds:
                lines.append(f"{label}: fold {fold} lacks {_plural('seed', sorted(all_seeds - seeds))}")
    return lines


def setting_label(setting: tuple) -> str:
    """'task1 · lung_infection', 'task3-nsclc · infection · grouped split' (the variant when not official)."""
    task, source, subtask, variant = setting
    parts = [task if source is None else f"{task}-{source}", subtask]
    return " · ".join(parts if variant == "official" else [*parts, f"{variant} split"])


def method_label(method: tuple) -> str:
    """The setting's label and the method's name: 'task1 · lung_infection · unet2d'."""
    return f"{setting_label(method[:4])} · {method[4]}"


def _plural(word: str, items: list) -> str:
    return f"{word}{'s' if len(items) > 1 else ''} {', '.join(map(str, items))}"

"""The benchmark's official case splits, as shipped in `covlight/resources/splits/`.

The JSON files are verbatim copies of the benchmark's split files (converted 1:1 from its nnU-Net
`splits_final.pkl` files, snapshot b87e054 of github.com/JunMa11/COVID-19-CT-Seg-Benchmark): a list of folds,
each `{"train": [...], "val": [...]}` (Task3 files add `"test"`), case ids as file stems, in the files' order.

`official_split` turns them into one `Split` per (task, subtask, fold, source, variant):

- task1: train on the fold's 4 COVID-19-CT-Seg cases, test on its other 16. The file calls those 16 `val`,
  but they are the test cases, so `Split.val` is empty: nothing may be selected on them.
- task2: one split per source file (`fold` None or 0); the file's `val` is the in-domain held-out list
  (selection allowed); all 20 COVID-19-CT-Seg cases are test-only.
- task3 fold k: the task2 source's lists + task1 fold k's 4 COVID cases for training, the task2 `val` list,
  task1 fold k's 16 for test. This composition reproduces the Task3 files exactly (tests check it); the
  composition is used so the variants below and the MSD lung masks (no split file) follow the same rule.

MosMed (infection test set of every task) has no split file: every model of infection is tested on all its cases.

This module lives at the bottom layer (it imports only `covlight.benchmark`): the data module trains and tests on
these lists, and the report checks each run's per-case rows against the same lists.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING

from covlight.benchmark import (
    COVID,
    COVID_CASES,
    MOSMED,
    MOSMED_CASES,
    MOSMED_SUBTASKS,
    SOURCES,
    SPLIT_FILES,
    TASK1_80_FILE,
    TASK1_FILE,
    TWINS,
    check_combination,
    source_splits,
)

if TYPE_CHECKING:  # importlib.resources.abc is Python >= 3.11; the package supports 3.10
    from importlib.resources.abc import Traversable


@dataclass(frozen=True)
class Split:
    """Case ids per dataset name for one run.

    `val` holds in-domain held-out lists that may be used for selection (empty for task1); `test` holds
    test-only sets. `warnings` explains any known flaw of the split, for the run log and the report.
    """

    train: dict[str, list[str]]
    val: dict[str, list[str]]
    test: dict[str, list[str]]
    warnings: tuple[str, ...] = ()


def split_file_path(name: str) -> Traversable:
    """The packaged copy of an official split file, by its benchmark file name."""
    if name not in SPLIT_FILES:
        raise ValueError(f"unknown split file {name!r}; the official ones are: {', '.join(SPLIT_FILES)}")
    return resources.files("covlight").joinpath("resources", "splits", name)


def load_split_file(name: str) -> list[dict[str, list[str]]]:
    """An official split file as stored: a list of folds, each a dict of case-id lists (fresh lists each call)."""
    return json.loads(split_file_path(name).read_text(encoding="utf-8"))


def official_split(
    task: str, subtask: str, fold: int | None, source: str | None = None, variant: str = "official"
) -> Split:
    """The split of one run; invalid combinations raise ConfigError naming the valid options.

    `source` is None for task1 and one of `SOURCES` for task2 and task3; "all" (our addition, not a published
    row) is the union of every source that annotates `subtask`, each under its own dataset name.

    `variant` (folds of task1 and task3):
    - "official" (default): the published folds. Folds 2 and 4 put the two scans of one patient (`TWINS`) on
      both sides; the split then carries a warning.
    - "grouped": patient-grouped. Where a fold straddles the twins, the test-side twin is dropped from the test
      set (15 test cases instead of 16). This is the least invasive fix: training stays exactly the published
      fold, so the annotation budget (4 cases) and the trained models are those of the official fold (an
      official run can be re-scored without the case); only the leaked case goes unscored.
    - "train80" / "train80_grouped": task1 only, the repository's "80% training" variant
      (`Task1_COVID_82_datasplit.json`: the same folds with train and test swapped, 16 train / 4 test).
    Task2 trains on no COVID case, so "official" and "grouped" are the same there.
    """
    check_combination(task, subtask, fold, source, variant)
    if task == "task1":
        train, test, warnings = _covid_fold(task, fold, variant)
        return Split(train={COVID: train}, val={}, test={COVID: test} | _mosmed(subtask), warnings=warnings)
    source_lists = _source_lists(task, subtask, source)
    train = {dataset: lists["train"] for dataset, lists in source_lists.items()}
    val = {dataset: lists["val"] for dataset, lists in source_lists.items()}
    if task == "task2":
        return Split(train=train, val=val, test={COVID: list(COVID_CASES)} | _mosmed(subtask))
    covid_train, covid_test, warnings = _covid_fold(task, fold, variant)
    return Split(train=train | {COVID: covid_train}, val=val, test={COVID: covid_test} | _mosmed(subtask),
                 warnings=warnings)


def _mosmed(subtask: str) -> dict[str, list[str]]:
    """MosMed (infection only) is a test set of every model that segments infection."""
    return {MOSMED: list(MOSMED_CASES)} if subtask in MOSMED_SUBTASKS else {}


def _source_lists(task: str, subtask: str, source: str) -> dict[str, dict[str, list[str]]]:
    """dataset name -> {"train": [...], "val": [...]} of the task2 split file(s) of `source`."""
    files = source_splits(task)
    chosen = [key for key in files if key[1] == subtask and source in (key[0], "all")]
    lists = {}
    for key in sorted(chosen, key=lambda key: SOURCES.index(key[0])):
        name, dataset = files[key]
        lists[dataset] = load_split_file(name)[0]
    return lists


def _covid_fold(task: str, fold: int | None, variant: str) -> tuple[list[str], list[str], tuple[str, ...]]:
    """(train, test, warnings) of COVID-19-CT-Seg fold `fold` under `variant` (see `official_split`)."""
    entry = load_split_file(TASK1_80_FILE if variant.startswith("train80") else TASK1_FILE)[fold]
    train, test = entry["train"], entry["val"]
    train_twins = [case for case in TWINS if case in train]
    test_twins = [case for case in TWINS if case in test]
    if not (train_twins and test_twins):
        return train, test, ()
    (train_twin,), (test_twin,) = train_twins, test_twins
    flaw = (
        f"{task} fold {fold}: {train_twin} (training) and {test_twin} (test) are two scans of the same patient, "
        "so the official fold leaks that patient into its test set"
    )
    if variant.endswith("grouped"):
        test = [case for case in test if case != test_twin]
        note = f"patient-grouped variant: {test_twin} left out of the test set ({len(test)} cases)"
        return train, test, (f"{flaw}; {note}",)
    grouped = "train80_grouped" if variant == "train80" else "grouped"
    return train, test, (f"{flaw} and its score is optimistic; use variant={grouped} to leave it out",)

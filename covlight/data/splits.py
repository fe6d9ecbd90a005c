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

MosMed (infection test set of every task) has no split file: the data layer adds it as a test set.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING

from covlight.errors import ConfigError

if TYPE_CHECKING:  # importlib.resources.abc is Python >= 3.11; the package supports 3.10
    from importlib.resources.abc import Traversable

COVID = "covid19_ct_seg"
COVID_CASES: tuple[str, ...] = (
    "coronacases_001",
    "coronacases_002",
    "coronacases_003",
    "coronacases_004",
    "coronacases_005",
    "coronacases_006",
    "coronacases_007",
    "coronacases_008",
    "coronacases_009",
    "coronacases_010",
    "radiopaedia_10_85902_1",
    "radiopaedia_10_85902_3",
    "radiopaedia_14_85914_0",
    "radiopaedia_27_86410_0",
    "radiopaedia_29_86490_1",
    "radiopaedia_29_86491_1",
    "radiopaedia_36_86526_0",
    "radiopaedia_40_86625_0",
    "radiopaedia_4_85506_1",
    "radiopaedia_7_85703_0",
)
# Two scans of one patient: official folds 2 and 4 put one in training and the other in the test set.
# MosMedData COVID19_1110: the 50 CT-1 studies with infection masks, a test set of every infection model.
MOSMED = "mosmed"
MOSMED_CASES: tuple[str, ...] = tuple(f"study_{n:04d}" for n in range(255, 305))
TWINS: tuple[str, str] = ("radiopaedia_10_85902_1", "radiopaedia_10_85902_3")

TASKS = ("task1", "task2", "task3")
SUBTASKS = ("lung", "infection", "lung_infection")
SOURCES = ("structseg", "nsclc", "msd", "all")
VARIANTS = ("official", "grouped", "train80", "train80_grouped")
FOLDS = (0, 1, 2, 3, 4)

TASK1_FILE = "Task1_COVID_datasplit.json"
TASK1_80_FILE = "Task1_COVID_82_datasplit.json"
# (source, subtask) -> (task2 split file, dataset name). Task3 file 30x is task2 file 20x + the COVID cases.
SOURCE_SPLITS: dict[tuple[str, str], tuple[str, str]] = {
    ("structseg", "lung"): ("Task200_StructSegLung_datasplit.json", "structseg_lung"),
    ("nsclc", "lung"): ("Task201_NSCLCLung_datasplit.json", "nsclc_lung"),
    ("msd", "infection"): ("Task202_MSD_LungTumor_datasplit.json", "msd_lung_tumour"),
    ("structseg", "infection"): ("Task203_StructSegTumor_datasplit.json", "structseg_gtv"),
    ("nsclc", "infection"): ("Task204_NSCLCPE_datasplit.json", "nsclc_effusion"),
}
# MSD lung masks were released after the paper's task2; task3 trains on them with Task302's (= Task202's) lists.
TASK3_ONLY_SPLITS: dict[tuple[str, str], tuple[str, str]] = {
    ("msd", "lung"): ("Task202_MSD_LungTumor_datasplit.json", "msd_lung"),
}
SPLIT_FILES: tuple[str, ...] = (
    TASK1_FILE,
    TASK1_80_FILE,
    "Task200_StructSegLung_datasplit.json",
    "Task201_NSCLCLung_datasplit.json",
    "Task202_MSD_LungTumor_datasplit.json",
    "Task203_StructSegTumor_datasplit.json",
    "Task204_NSCLCPE_datasplit.json",
    "Task300_StructSegLung_datasplit.json",
    "Task301_NSCLCLung_datasplit.json",
    "Task302_MSD_LungTumor_datasplit.json",
    "Task303_StructSegTumor_datasplit.json",
    "Task304_NSCLCPE_datasplit.json",
)


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
    if task not in TASKS:
        raise ConfigError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    if subtask not in SUBTASKS:
        raise ConfigError(f"unknown subtask {subtask!r}; choose one of {', '.join(SUBTASKS)}")
    if variant not in VARIANTS:
        raise ConfigError(f"unknown split variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    if task == "task1":
        if source is not None:
            raise ConfigError(f"task1 trains on COVID-19-CT-Seg only: source must be None, got {source!r}")
        train, test, warnings = _covid_fold(task, fold, variant)
        return Split(train={COVID: train}, val={}, test={COVID: test} | _mosmed(subtask), warnings=warnings)

    if subtask == "lung_infection":
        raise ConfigError(
            f"subtask 'lung_infection' is task1's only ({task} asked): the {task} sources annotate either lungs "
            "or lesions, and one model for all three labels on them would need a partial-label loss. "
            "Use subtask=lung or subtask=infection."
        )
    if variant.startswith("train80"):
        raise ConfigError(
            f"variant {variant!r} is task1's 80% training variant; {task} takes 'official' or 'grouped'"
        )
    if task == "task2" and fold not in (None, 0):
        raise ConfigError(f"task2 has one split per source (no folds): fold must be None (or 0), got {fold!r}")
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
    return {MOSMED: list(MOSMED_CASES)} if subtask in ("infection", "lung_infection") else {}


def _source_lists(task: str, subtask: str, source: str | None) -> dict[str, dict[str, list[str]]]:
    """dataset name -> {"train": [...], "val": [...]} of the task2 split file(s) of `source`."""
    if source not in SOURCES:
        raise ConfigError(
            f"{task} needs a training source: source must be one of {', '.join(SOURCES)}, got {source!r}"
        )
    files = (SOURCE_SPLITS | TASK3_ONLY_SPLITS) if task == "task3" else SOURCE_SPLITS
    if source != "all" and (source, subtask) not in files:
        raise ConfigError(
            f"no published {subtask} training source for source={source!r} in {task}: MSD's lung masks were "
            "released after the paper's task2 (its Task2-MSD lung rows are '-'); use source=structseg or "
            "source=nsclc, or task3, which trains on the MSD lung masks with Task302's case lists"
        )
    chosen = [key for key in files if key[1] == subtask and source in (key[0], "all")]
    lists = {}
    for key in sorted(chosen, key=lambda key: SOURCES.index(key[0])):
        name, dataset = files[key]
        lists[dataset] = load_split_file(name)[0]
    return lists


def _covid_fold(task: str, fold: int | None, variant: str) -> tuple[list[str], list[str], tuple[str, ...]]:
    """(train, test, warnings) of COVID-19-CT-Seg fold `fold` under `variant` (see `official_split`)."""
    if isinstance(fold, bool) or not isinstance(fold, int) or fold not in FOLDS:
        raise ConfigError(
            f"{task} has the official folds {list(FOLDS)}: fold must be one of them, got {fold!r}"
        )
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

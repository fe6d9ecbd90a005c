"""The packaged official splits: equal to the benchmark's files, composed correctly, invalid uses refused."""

from __future__ import annotations

import itertools
import json

import pytest

from covlight.benchmark import (
    COVID,
    COVID_CASES,
    MOSMED,
    MOSMED_CASES,
    SPLIT_FILES,
    SUBTASKS,
    TASKS,
    TWINS,
    VARIANTS,
)
from covlight.errors import ConfigError
from covlight.splits import Split, load_split_file, official_split, split_file_path

T1 = load_split_file("Task1_COVID_datasplit.json")
T1_80 = load_split_file("Task1_COVID_82_datasplit.json")
# (source, subtask) -> (task2 file, task3 file, dataset); msd lung has no task2 row and reuses MSD's lists.
SOURCES = {
    ("structseg", "lung"): (
        "Task200_StructSegLung_datasplit.json",
        "Task300_StructSegLung_datasplit.json",
        "structseg_lung",
    ),
    ("nsclc", "lung"): ("Task201_NSCLCLung_datasplit.json", "Task301_NSCLCLung_datasplit.json", "nsclc_lung"),
    ("msd", "lung"): (None, "Task302_MSD_LungTumor_datasplit.json", "msd_lung"),
    ("structseg", "infection"): (
        "Task203_StructSegTumor_datasplit.json",
        "Task303_StructSegTumor_datasplit.json",
        "structseg_gtv",
    ),
    ("nsclc", "infection"): (
        "Task204_NSCLCPE_datasplit.json",
        "Task304_NSCLCPE_datasplit.json",
        "nsclc_effusion",
    ),
    ("msd", "infection"): (
        "Task202_MSD_LungTumor_datasplit.json",
        "Task302_MSD_LungTumor_datasplit.json",
        "msd_lung_tumour",
    ),
}


def test_packaged_split_files_equal_the_benchmark_files(shared_benchmark):
    official = {path.name: path for path in shared_benchmark.glob("Task*/*_datasplit.json")}
    assert sorted(official) == sorted(SPLIT_FILES)
    for name, path in official.items():
        assert load_split_file(name) == json.loads(path.read_text(encoding="utf-8")), name
        assert split_file_path(name).read_bytes() == path.read_bytes(), name


def test_unknown_split_file_is_refused():
    with pytest.raises(ValueError, match="Task1_COVID_datasplit.json"):
        split_file_path("Task999.json")


def test_covid_cases_are_the_20_of_every_task1_fold():
    assert list(COVID_CASES) == sorted(COVID_CASES) and len(set(COVID_CASES)) == 20
    for fold in (*T1, *T1_80):
        assert sorted(fold["train"] + fold["val"]) == list(COVID_CASES)
    assert [len(fold["train"]) for fold in T1] == [4] * 5
    assert [(f80["train"], f80["val"]) for f80 in T1_80] == [(f["val"], f["train"]) for f in T1]


def test_task3_files_are_task2_train_plus_task1_fold_train():
    """The composition official_split uses reproduces every Task3 file exactly, case order included."""
    for (source, subtask), (_, task3_file, dataset) in SOURCES.items():
        task3 = load_split_file(task3_file)
        assert len(task3) == 5
        for fold, entry in enumerate(task3):
            split = official_split("task3", subtask, fold, source)
            assert split.train[dataset] + split.train[COVID] == entry["train"]
            assert split.train[COVID] == T1[fold]["train"]
            assert split.val == {dataset: entry["val"]}
            assert split.test == {COVID: entry["test"], **mosmed(subtask)}
            assert list(split.train) == [dataset, COVID]


def mosmed(subtask: str) -> dict[str, list[str]]:
    return {MOSMED: list(MOSMED_CASES)} if subtask != "lung" else {}


def test_mosmed_is_the_50_labelled_ct1_studies():
    assert len(MOSMED_CASES) == 50 and MOSMED_CASES[0] == "study_0255" and MOSMED_CASES[-1] == "study_0304"


@pytest.mark.parametrize("subtask", SUBTASKS)
@pytest.mark.parametrize("fold", range(5))
def test_task1(subtask, fold):
    split = official_split("task1", subtask, fold)
    assert split.train == {COVID: T1[fold]["train"]}
    assert split.val == {}, "task1's official val lists are its test cases: nothing may select on them"
    assert split.test == {COVID: T1[fold]["val"], **mosmed(subtask)}
    train80 = official_split("task1", subtask, fold, variant="train80")
    assert (train80.train, train80.val, train80.test) == (
        {COVID: T1[fold]["val"]},
        {},
        {COVID: T1[fold]["train"], **mosmed(subtask)},
    )


@pytest.mark.parametrize("source, subtask", [key for key in SOURCES if key != ("msd", "lung")])
@pytest.mark.parametrize("fold", [None, 0])
def test_task2(source, subtask, fold):
    task2_file, _, dataset = SOURCES[source, subtask]
    (entry,) = load_split_file(task2_file)
    for variant in ("official", "grouped"):
        split = official_split("task2", subtask, fold, source, variant)
        assert split.train == {dataset: entry["train"]}
        assert split.val == {dataset: entry["val"]}
        assert split.test == {COVID: list(COVID_CASES), **mosmed(subtask)}
        assert split.warnings == ()


@pytest.mark.parametrize("task, folds", [("task2", [None, 0]), ("task3", range(5))])
@pytest.mark.parametrize("subtask", ["lung", "infection"])
def test_source_all_is_the_union_of_the_sources(task, folds, subtask):
    for fold in folds:
        split = official_split(task, subtask, fold, "all")
        expected_train, expected_val = {}, {}
        for source in ("structseg", "nsclc", "msd"):
            if task == "task2" and (source, subtask) == ("msd", "lung"):
                continue
            single = official_split(task, subtask, fold, source)
            expected_train |= {k: v for k, v in single.train.items() if k != COVID}
            expected_val |= single.val
            assert split.test == single.test and split.warnings == single.warnings
        if task == "task3":
            expected_train[COVID] = T1[fold]["train"]
        assert split.train == expected_train and split.val == expected_val
    assert len(split.train) == (2 if (task, subtask) == ("task2", "lung") else 3) + (task == "task3")


def straddles(split: Split) -> bool:
    train = {case for cases in split.train.values() for case in cases}
    test = {case for cases in split.test.values() for case in cases}
    return bool(train & set(TWINS)) and bool(test & set(TWINS))


@pytest.mark.parametrize(
    "task, source, variants",
    [
        ("task1", None, ("official", "grouped")),
        ("task1", None, ("train80", "train80_grouped")),
        ("task3", "structseg", ("official", "grouped")),
    ],
)
def test_twin_patient_flaw(task, source, variants):
    official, grouped = variants
    flawed = [
        fold for fold in range(5) if straddles(official_split(task, "infection", fold, source, official))
    ]
    assert flawed == [2, 4]
    for fold in range(5):
        plain = official_split(task, "infection", fold, source, official)
        fixed = official_split(task, "infection", fold, source, grouped)
        assert not straddles(fixed)
        assert fixed.train == plain.train, "grouping must not change the training set"
        if fold not in flawed:
            assert fixed == plain and plain.warnings == ()
            continue
        (leaked,) = set(plain.test[COVID]) & set(TWINS)
        assert fixed.test[COVID] == [case for case in plain.test[COVID] if case != leaked]
        (warning,) = plain.warnings
        assert "same patient" in warning and leaked in warning and f"variant={grouped}" in warning
        (note,) = fixed.warnings
        assert "same patient" in note and leaked in note and "left out of the test set" in note


def test_valid_combinations_are_exactly_the_documented_ones():
    """Every (task, subtask, fold, source, variant) either composes or raises ConfigError; the valid ones are
    task1 x 3 subtasks x 5 folds x 4 variants, task2 x 5 sources (+ all x 2) x fold None/0 x 2 variants,
    task3 x 6 sources (+ all x 2) x 5 folds x 2 variants."""
    valid = set()
    for combo in itertools.product(
        (*TASKS, "task4"),
        (*SUBTASKS, "lungs"),
        (None, 0, 1, 2, 3, 4, 5, -1, "0", True),
        (None, "structseg", "nsclc", "msd", "all", "mosmed"),
        (*VARIANTS, "other"),
    ):
        try:
            official_split(*combo)
        except ConfigError:
            continue
        valid.add(combo)
    expected = {
        ("task1", subtask, fold, None, variant)
        for subtask in SUBTASKS
        for fold in range(5)
        for variant in VARIANTS
    }
    pairs = [*(key for key in SOURCES if key != ("msd", "lung")), ("all", "lung"), ("all", "infection")]
    expected |= {
        ("task2", subtask, fold, source, variant)
        for source, subtask in pairs
        for fold in (None, 0)
        for variant in ("official", "grouped")
    }
    expected |= {
        ("task3", subtask, fold, source, variant)
        for source, subtask in [*SOURCES, ("all", "lung"), ("all", "infection")]
        for fold in range(5)
        for variant in ("official", "grouped")
    }
    assert valid == expected


@pytest.mark.parametrize(
    "args, message",
    [
        (("task4", "lung", 0), "choose one of task1, task2, task3"),
        (("task1", "lungs", 0), "choose one of lung, infection, lung_infection"),
        (("task1", "lung", 0, None, "eighty"), "choose one of official, grouped, train80, train80_grouped"),
        (("task1", "lung", 5), r"official folds \[0, 1, 2, 3, 4\]"),
        (("task1", "lung", None), r"official folds \[0, 1, 2, 3, 4\]"),
        (("task1", "lung", 0, "structseg"), "task1 trains on COVID-19-CT-Seg only"),
        (("task2", "lung", 1, "structseg"), "task2 has one split per source"),
        (("task3", "lung", None, "structseg"), r"official folds \[0, 1, 2, 3, 4\]"),
        (("task2", "lung", None), "source must be one of structseg, nsclc, msd, all"),
        (("task3", "infection", 0, "mosmed"), "source must be one of structseg, nsclc, msd, all"),
        (("task2", "lung", None, "msd"), "no published lung training source for source='msd' in task2"),
        (("task2", "lung_infection", None, "structseg"), "partial-label loss"),
        (("task3", "lung_infection", 0, "all"), "partial-label loss"),
        (("task3", "lung", 0, "structseg", "train80"), "task1's 80% training variant"),
    ],
)
def test_invalid_combinations_say_why(args, message):
    with pytest.raises(ConfigError, match=message):
        official_split(*args)


def test_returned_lists_are_fresh():
    official_split("task1", "lung", 0).train[COVID].append("x")
    assert "x" not in official_split("task1", "lung", 0).train[COVID]

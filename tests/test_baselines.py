"""The packaged published baselines: every cell of the benchmark's tables, typos as printed, units made uniform."""

from __future__ import annotations

import csv

import pytest

from covlight.report.baselines import BASELINE_FILES, load_published, published_table

KEYS = ("task", "model", "setting", "training_source", "fold", "eval_set", "structure", "metric")


def test_every_published_cell_is_in_the_project(shared_benchmark):
    official = {path.name: path for path in shared_benchmark.rglob("*.csv")}
    assert sorted(official) == sorted(BASELINE_FILES)
    ours = {(row["file"], *(row[key] for key in KEYS)): row for row in load_published()}
    count = 0
    for name, path in official.items():
        with open(path, newline="", encoding="utf-8") as handle:
            for cell in csv.DictReader(handle):
                row = ours[(name, *(cell[key] for key in KEYS))]
                assert row["raw"] == cell["raw"]
                assert row["mean"] == (float(cell["mean"]) if cell["mean"] else None)
                assert row["std"] == (float(cell["std"]) if cell["std"] else None)
                count += 1
    assert count == len(ours) == 444


def test_units_and_not_reported_cells():
    rows = load_published()
    assert {row["file"]: row["unit"] for row in rows} == BASELINE_FILES
    missing = [row for row in rows if row["raw"] == "-"]
    assert len(missing) == 8 and all(row["mean"] is None and row["std"] is None for row in missing)
    assert {row["setting"] for row in missing} == {"Task2-MSD"}
    fractions = [row for row in rows if row["unit"] == "fraction" and row["mean"] is not None]
    assert all(0 <= row["mean"] <= 1 for row in fractions)


def test_typos_are_kept_as_printed():
    (task1,) = published_table(
        task="task1", setting="20pct_train_lung_subtask", fold="Fold4", structure="left_lung", metric="DSC"
    )
    assert task1["raw"] == "0.8833±0.7597" and (task1["mean"], task1["std"]) == (88.33, 75.97)
    (task3,) = published_table(
        task="Task3",
        training_source="StructSeg Gross Target + COVID-19-CT-Seg(4)",
        fold="Fold1",
        eval_set="validation",
        metric="NSD",
    )
    assert task3["raw"] == "00.7605±0.1806" and (task3["mean"], task3["std"]) == (76.05, 18.06)


def test_published_table_is_in_percent():
    (fold0,) = published_table(
        task="Task1", setting="20pct_train_lung_subtask", fold="Fold0", structure="left_lung", metric="DSC"
    )
    assert (fold0["mean"], fold0["std"], fold0["unit"]) == (84.88, 8.242, "percent")
    (summary,) = published_table(
        task="Task1",
        model="3D U-Net (nnU-Net)",
        setting="Task1-Separate",
        structure="left_lung",
        metric="DSC",
    )
    assert (summary["mean"], summary["std"], summary["raw"]) == (85.8, 10.5, "85.8±10.5")
    table = published_table()
    assert len(table) == 444 and {row["unit"] for row in table} == {"percent"}
    for row, loaded in zip(table, load_published(), strict=True):
        if row["mean"] is not None:
            factor = 100 if loaded["unit"] == "fraction" else 1
            assert row["mean"] == pytest.approx(loaded["mean"] * factor, abs=1e-9)
            assert row["std"] == pytest.approx(loaded["std"] * factor, abs=1e-9)
    assert published_table(task="task9") == []

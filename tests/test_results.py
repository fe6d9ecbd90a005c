"""The per-case result table: one summary rule, one CSV format written whole, older files still read."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest

from covlight.metrics.results import CaseResults, stats

COLUMNS = ["LesionDSC", "LesionNSD-3mm"]


def test_stats_leave_nan_out_and_count_it():
    assert stats([0.5, math.nan, 1.0]) == {"mean": 0.75, "std": 0.25, "n": 2, "nan": 1}
    empty = stats([math.nan, math.nan])
    assert math.isnan(empty["mean"]) and math.isnan(empty["std"]) and (empty["n"], empty["nan"]) == (0, 2)


def test_summary_per_dataset_and_gathered_rows_count_each_case_once():
    rows = [{"Name": "b", "dataset": "covid", "LesionDSC": 0.25, "LesionNSD-3mm": math.nan},
            {"Name": "a", "dataset": "covid", "LesionDSC": 0.75, "LesionNSD-3mm": 0.5},
            {"Name": "a", "dataset": "covid", "LesionDSC": 0.75, "LesionNSD-3mm": 0.5},  # a padded repeat
            {"Name": "s", "dataset": "mosmed", "LesionDSC": 0.1, "LesionNSD-3mm": 0.2}]
    results = CaseResults(COLUMNS, rows=rows).gathered()
    assert [(row["dataset"], row["Name"]) for row in results.rows] == [("covid", "a"), ("covid", "b"),
                                                                       ("mosmed", "s")]
    summary = results.summary()
    assert list(summary) == ["covid", "mosmed"]
    assert summary["covid"]["LesionDSC"] == {"mean": 0.5, "std": 0.25, "n": 2, "nan": 0}
    assert summary["covid"]["LesionNSD-3mm"] == {"mean": 0.5, "std": 0.0, "n": 1, "nan": 1}


def test_csv_round_trip_is_exact_and_nan_is_an_empty_cell(tmp_path):
    value = float(np.float32(0.1)) / 3  # no short decimal: full precision must survive
    results = CaseResults(COLUMNS, rows=[{"Name": "a", "dataset": "covid", "LesionDSC": value,
                                          "LesionNSD-3mm": math.nan}])
    results.write(tmp_path / "metrics.csv")
    assert (tmp_path / "metrics.csv").read_text().splitlines() == [
        "Name,dataset,LesionDSC,LesionNSD-3mm", f"a,covid,{value!r},"]
    (row,) = CaseResults.read(tmp_path / "metrics.csv").rows
    assert row["LesionDSC"] == value and math.isnan(row["LesionNSD-3mm"])
    assert os.listdir(tmp_path) == ["metrics.csv"]


def test_older_files_with_nan_spelled_out_are_read(tmp_path):
    (tmp_path / "metrics.csv").write_text("Name,dataset,LesionDSC,LesionNSD-3mm\na,covid,0.123457,nan\n")
    results = CaseResults.read(tmp_path / "metrics.csv")
    assert results.columns == COLUMNS and results.rows[0]["LesionDSC"] == 0.123457
    assert math.isnan(results.rows[0]["LesionNSD-3mm"])
    (tmp_path / "bad.csv").write_text("Name,LesionDSC\na,0.5\n")
    with pytest.raises(ValueError, match="no dataset column"):
        CaseResults.read(tmp_path / "bad.csv")


"""One table of per-case results, the one way they are summarised, and the one CSV format they are stored in.

MONAI's cumulative-metric pattern: per-case rows are collected as cases are scored, gathered across DDP ranks
once, and only then summarised, so under DDP every case counts once. A row is `{"Name": case, ["dataset":
name,] column: float}`; `keys` names its identity columns.

The CSV (a run's `metrics.csv`, `covlight.evaluate`'s output): the identity columns, then the metric columns;
floats at full precision (Python's repr: read back bit for bit), NaN (a structure absent from both masks) as
an empty cell, as pandas and the benchmark's evaluation script write it. Files written before this format
spelled NaN `nan` and rounded to 6 decimals; `read` reads both.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from covlight.atomic import replacing

NAN_CELL = ""
RUN_KEYS = ("Name", "dataset")  # a run's metrics.csv: case id and test set


def stats(values) -> dict:
    """The summary rule: mean and population std over the values that are not NaN, how many those are, and how
    many are NaN. With no value left, mean and std are NaN."""
    values = np.asarray(list(values), dtype=np.float64)
    finite = values[~np.isnan(values)]
    with np.errstate(invalid="ignore"):  # an inf distance (one mask empty) makes the std NaN
        return {
            "mean": float(finite.mean()) if finite.size else math.nan,
            "std": float(finite.std()) if finite.size else math.nan,
            "n": int(finite.size),
            "nan": int(values.size - finite.size),
        }


@dataclass
class CaseResults:
    """Per-case rows of one evaluation, with their metric `columns` in order."""

    columns: list[str]
    keys: tuple[str, ...] = RUN_KEYS
    rows: list[dict] = field(default_factory=list)

    def append(self, row: dict) -> None:
        self.rows.append(row)

    def gathered(self) -> CaseResults:
        """The rows of every DDP rank, each case once (a distributed sampler may repeat a case to even out the
        ranks), sorted by the identity columns. Without DDP: this rank's rows, so sorted."""
        rows = self.rows
        import torch.distributed as dist  # only here: scoring a folder of files needs no torch

        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            gathered: list[list[dict]] = [None] * dist.get_world_size()  # type: ignore[list-item]
            dist.all_gather_object(gathered, rows)
            rows = [row for part in gathered for row in part]
        unique = {tuple(row[key] for key in self.keys): row for row in rows}
        return CaseResults(self.columns, self.keys, [unique[key] for key in sorted(unique)])

    def column_stats(self) -> dict[str, dict]:
        """`stats` of every column over all rows."""
        return {column: stats(row.get(column, math.nan) for row in self.rows) for column in self.columns}

    def summary(self) -> dict[str, dict[str, dict]]:
        """Per test set (`dataset`, sorted) and column: `stats` over its cases."""
        datasets = sorted({row["dataset"] for row in self.rows})
        return {dataset: CaseResults(self.columns, self.keys,
                                     [row for row in self.rows if row["dataset"] == dataset]).column_stats()
                for dataset in datasets}

    def write(self, path: Path) -> None:
        """The CSV, written whole or not at all; a metric a row lacks is NaN."""
        rows = [{column: math.nan for column in self.columns} | row for row in self.rows]
        write_csv(path, rows, [*self.keys, *self.columns])

    @classmethod
    def read(cls, path: Path, keys: tuple[str, ...] = RUN_KEYS) -> CaseResults:
        """A CSV of this format (or the older one): every column but the `keys` is a metric column of floats.

        Raises ValueError when a key column is missing, a row has another number of cells than the header (a file
        cut off mid-row) or a cell is not a number.
        """
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            header = list(reader.fieldnames or [])
            missing = [key for key in keys if key not in header]
            if missing:
                raise ValueError(f"{path}: no {', '.join(missing)} column (header: {', '.join(header)})")
            columns = [name for name in header if name not in keys]
            rows = []
            for row in reader:
                if None in row or None in row.values():  # DictReader's marks of too many or too few cells
                    raise ValueError(f"{path}: line {reader.line_num} has another number of cells than the header "
                                     f"({len(header)}): the file is cut off or damaged")
                try:
                    rows.append({**{key: row[key] for key in keys}, **{c: number(row[c]) for c in columns}})
                except ValueError as error:
                    raise ValueError(f"{path}: line {reader.line_num}: {error}") from None
        return cls(columns, tuple(keys), rows)


def write_csv(path: Path, rows: list[dict], columns: list[str]) -> None:
    """Rows as CSV in this format (whole or not at all): floats at full precision, NaN and None as empty cells;
    keys of a row that are not `columns` are left out."""
    with replacing(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        writer.writerows([cell(row.get(column)) for column in columns] for row in rows)


def cell(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return NAN_CELL
    return repr(float(value)) if isinstance(value, float) else str(value)


def number(text: str) -> float:
    """A metric cell: empty (this format) or `nan` (the older one) is NaN."""
    return math.nan if text.strip() in (NAN_CELL, "nan") else float(text)


def summary_table(column_stats: dict[str, dict], title: str):
    """A console table (rich) of `column_stats`: mean ± std, cases scored, cases NaN."""
    from rich.table import Table

    table = Table(title=title)
    for heading in ("column", "mean ± std", "cases", "NaN"):
        table.add_column(heading, justify="left" if heading == "column" else "right")
    for column, values in column_stats.items():
        text = "-" if math.isnan(values["mean"]) else f"{values['mean']:.4f} ± {values['std']:.4f}"
        table.add_row(column, text, str(values["n"]), str(values["nan"]))
    return table

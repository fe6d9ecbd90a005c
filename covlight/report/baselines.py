"""The benchmark's published baselines (nnU-Net 2D and 3D U-Nets), shipped in `covlight/resources/baselines/`.

The four CSVs are verbatim copies of the tables transcribed from the benchmark's READMEs (snapshot b87e054 of
github.com/JunMa11/COVID-19-CT-Seg-Benchmark), columns `task, model, setting, training_source, fold, eval_set,
structure, metric, mean, std, raw`, where `raw` is the exact published cell ("mean±std", or "-" when not
reported). The summary table is in percent, the per-fold 3D U-Net tables in fractions (0-1).

`mean` and `std` are parsed from `raw` as printed, so the two published typos stay as they are: Task1 fold 4
left-lung DSC "0.8833±0.7597" (std probably 0.07597) and Task3 StructSeg-GTV fold 1 NSD "00.7605±0.1806"
(read as 0.7605). Correcting them would put numbers in the authors' mouths; the report shows what was printed.
"""

from __future__ import annotations

import csv
import io
from decimal import Decimal
from importlib import resources

# file name -> unit of its mean/std
BASELINE_FILES: dict[str, str] = {
    "summary_README_3D_2D_UNet_percent.csv": "percent",
    "Task1_3DUNet_fold_results.csv": "fraction",
    "Task2_3DUNet_results.csv": "fraction",
    "Task3_3DUNet_fold_results.csv": "fraction",
}


def load_published() -> list[dict]:
    """Every published cell as a row: the CSV's text columns, `raw` as printed, `mean`/`std` as floats parsed
    from `raw` in the file's unit (None when not reported), `unit` ("percent" or "fraction") and `file`."""
    rows = []
    for name, unit in BASELINE_FILES.items():
        text = (
            resources.files("covlight").joinpath("resources", "baselines", name).read_text(encoding="utf-8")
        )
        for row in csv.DictReader(io.StringIO(text)):
            mean, std = _parse(row["raw"])
            rows.append(row | {"mean": _number(mean), "std": _number(std), "unit": unit, "file": name})
    return rows


def published_table(
    *,
    task: str | None = None,
    model: str | None = None,
    setting: str | None = None,
    training_source: str | None = None,
    fold: str | None = None,
    eval_set: str | None = None,
    structure: str | None = None,
    metric: str | None = None,
) -> list[dict]:
    """Published rows matching every given column value, with `mean`/`std` in percent whatever the file's unit.

    Values match the CSV text exactly, except `task`, which matches case-insensitively ("task1" finds "Task1").
    Fractions are scaled by 100 in decimal arithmetic, so 0.8488 becomes exactly 84.88, not 84.88000000000001.
    """
    wanted = {
        "model": model,
        "setting": setting,
        "training_source": training_source,
        "fold": fold,
        "eval_set": eval_set,
        "structure": structure,
        "metric": metric,
    }
    wanted = {key: value for key, value in wanted.items() if value is not None}
    table = []
    for row in load_published():
        if task is not None and row["task"].lower() != task.lower():
            continue
        if any(row[key] != value for key, value in wanted.items()):
            continue
        mean, std = _parse(row["raw"])
        scale = 0 if row["unit"] == "percent" else 2
        table.append(row | {"mean": _number(mean, scale), "std": _number(std, scale), "unit": "percent"})
    return table


def _parse(raw: str) -> tuple[str, str] | tuple[None, None]:
    """("mean", "std") text of a published cell, or (None, None) for "-" (not reported)."""
    if raw.strip() == "-":
        return None, None
    mean, std = raw.split("±")
    return mean.strip(), std.strip()


def _number(text: str | None, scale: int = 0) -> float | None:
    """float(text) * 10**scale, scaled in decimal so no binary rounding noise is added."""
    return None if text is None else float(Decimal(text).scaleb(scale))

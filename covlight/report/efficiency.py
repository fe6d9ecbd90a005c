"""Annotation-efficiency curves: score against the annotation a run's training labels cost.

Each finished run writes `annotation_budget.json` (labelled cases, annotated axial slices; `covlight.train`). A
point is a (setting, test set, method, labelled cases, slices per case); its runs (seeds x folds) each give one
score, the mean over the run's test cases, and the point is their mean with a 95% t-interval (none from a single
run). x is the annotated slices (mean over the point's runs), or minutes at a per-slice rate the user gives.

A method is the run's name without its budget (`covlight.efficiency` names runs `<name>-budget-c<n>-s<k>`). The
lines of a method: its points with all cases and k slices per case ("slices per case"), with n cases and all their
slices ("labelled cases"), and, for a cross of both, n cases at k slices ("k slices per case"); the full-label point
belongs to the first two.
"""

from __future__ import annotations

import json
import math
import textwrap
from collections import defaultdict
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter, ScalarFormatter
from scipy import stats

from covlight.benchmark import ANNOTATION_BUDGET_FILE, STRUCTURES
from covlight.report.collect import Run, setting_label
from covlight.report.tables import METRICS, STRUCTURE_LABELS, dataset_label

BUDGET_MARK = "-budget-"
COLUMNS = ["task", "source", "subtask", "variant", "dataset", "method", "line", "labelled_cases", "slices_per_case",
           "annotated_slices", "minutes", "structure", "metric", "mean", "ci95_low", "ci95_high", "runs"]


def budget_of(run: Run) -> dict | None:
    """The run's annotation_budget.json, or None (a run from before it existed, a method without training)."""
    try:
        budget = json.loads((run.path / ANNOTATION_BUDGET_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return budget if isinstance(budget, dict) and "annotated_slices" in budget else None


def method_of(name: str) -> str:
    return name.split(BUDGET_MARK)[0]


def budget_name(name: str, cases: int | None, slices: int | None, strategy: str = "evenly") -> str:
    """A run's name at a budget: `<name>-budget-c<n|all>-s<k|all>[-<strategy>]` (its own run identity, so points
    never mix; the strategy is named when it is not the default, evenly)."""
    name = f"{name}{BUDGET_MARK}c{'all' if cases is None else cases}-s{'all' if slices is None else slices}"
    return name if strategy == "evenly" or slices is None else f"{name}-{strategy}"


def line_of(cases: int | None, slices: int | None) -> list[str]:
    """The lines a point lies on (module docstring)."""
    if cases is None and slices is None:
        return ["slices per case", "labelled cases"]
    if cases is None:
        return ["slices per case"]
    if slices is None:
        return ["labelled cases"]
    return [f"{slices} slices per case"]


def interval(values: list[float]) -> tuple[float, float, float]:
    """Mean and 95% t-interval of independent run scores (NaN bounds for a single run)."""
    values = np.asarray(values, dtype=float)
    mean = float(values.mean())
    if len(values) < 2:
        return mean, math.nan, math.nan
    half = float(stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values)))
    return mean, mean - half, mean + half


def efficiency_rows(runs: list[Run], minutes_per_slice: float | None = None) -> list[dict]:
    """One row per point, line, structure and metric (COLUMNS); none unless some run trained on a budget."""
    budgets = {run.path: budget_of(run) for run in runs}
    if not any(b and (b.get("cases") is not None or b.get("slices_per_case") is not None) for b in budgets.values()):
        return []
    scores: dict[tuple, list[float]] = defaultdict(list)
    spent: dict[tuple, list[float]] = defaultdict(list)
    for run in runs:
        budget = budgets[run.path]
        if budget is None:
            continue
        point = (run.setting, method_of(run.name), budget.get("cases"), budget.get("slices_per_case"))
        for dataset in sorted({case["dataset"] for case in run.cases}):
            spent[(*point, dataset)].append(float(budget["annotated_slices"]))
            for structure, spec in STRUCTURES.items():
                for metric in METRICS:
                    values = [case.get(spec.column(metric), math.nan) for case in run.cases
                              if case["dataset"] == dataset]
                    values = [v for v in values if not math.isnan(v)]
                    if values:
                        scores[(*point, dataset, structure, metric)].append(float(np.mean(values)))
    rows = []
    for (setting, method, cases, slices, dataset, structure, metric), values in sorted(scores.items(), key=_order):
        mean, low, high = interval(values)
        slices_spent = float(np.mean(spent[(setting, method, cases, slices, dataset)]))
        for line in line_of(cases, slices):
            rows.append({"task": setting[0], "source": setting[1], "subtask": setting[2], "variant": setting[3],
                         "dataset": dataset, "method": method, "line": line,
                         "labelled_cases": "all" if cases is None else cases,
                         "slices_per_case": "all" if slices is None else slices,
                         "annotated_slices": slices_spent,
                         "minutes": slices_spent * minutes_per_slice if minutes_per_slice else math.nan,
                         "structure": structure, "metric": metric, "mean": mean, "ci95_low": low, "ci95_high": high,
                         "runs": len(values)})
    rows.sort(key=lambda r: (str(r["task"]), str(r["source"]), r["subtask"], r["variant"], r["dataset"], r["method"],
                             list(STRUCTURES).index(r["structure"]), r["metric"], r["line"], r["annotated_slices"]))
    return rows


def _order(item) -> tuple:
    (setting, method, cases, slices, dataset, structure, metric), _ = item
    big = 10**9
    return (tuple(str(s) for s in setting), dataset, method, list(STRUCTURES).index(structure), metric,
            big if cases is None else cases, big if slices is None else slices)


def drawn_lines(by_line: dict[tuple, list[dict]]) -> dict[tuple, list[dict]]:
    """The (method, line)s to draw: a line whose only point is the full-label one (a study that swept cases alone
    still has a "slices per case" line through it) is left out when its method has another line."""
    def full_label_only(points):
        return all(p["labelled_cases"] == "all" and p["slices_per_case"] == "all" for p in points)

    kept = {}
    for (method, line), points in by_line.items():
        others = [key for key in by_line if key[0] == method and key[1] != line]
        if full_label_only(points) and any(not full_label_only(by_line[key]) for key in others):
            continue
        kept[method, line] = points
    return kept


def draw_efficiency(rows: list[dict], path: Path, minutes_per_slice: float | None = None) -> None:
    """Score (%) against annotated slices (log axis, ticks at the budgets): a row of panels per (setting, test set),
    one panel per (structure, metric), a line per (method, line) with its 95% intervals (cut to 0-100%), the
    methods' points set a little apart so that equal scores stay visible."""
    panels: dict[tuple, dict[tuple, dict[tuple, list[dict]]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for row in rows:
        panel = ((row["task"], row["source"], row["subtask"], row["variant"]), row["dataset"])
        panels[panel][(row["structure"], row["metric"])][(row["method"], row["line"])].append(row)
    width = max(len(cells) for cells in panels.values())
    figure = Figure(figsize=(4.2 * width, 3.6 * len(panels)), layout="constrained")
    axes = figure.subplots(len(panels), width, squeeze=False)
    lines = sorted({key for cells in panels.values() for by_line in cells.values() for key in drawn_lines(by_line)})
    colours = {key: f"C{i % 10}" for i, key in enumerate(lines)}
    methods = sorted({method for method, _ in lines})
    for row_axes, ((setting, dataset), cells) in zip(axes, panels.items(), strict=False):
        for ax, ((structure, metric), by_line) in zip(row_axes, cells.items(), strict=False):
            budgets = set()
            for key, points in sorted(drawn_lines(by_line).items()):
                points = sorted(points, key=lambda p: p["annotated_slices"])
                x = np.array([p["annotated_slices"] for p in points])
                budgets.update(x.tolist())
                dodge = math.exp(0.025 * (methods.index(key[0]) - (len(methods) - 1) / 2))
                y = np.array([100 * p["mean"] for p in points])
                low = np.clip([100 * p["ci95_low"] for p in points], 0, 100)
                high = np.clip([100 * p["ci95_high"] for p in points], 0, 100)
                error = np.nan_to_num(np.vstack([y - low, high - y]))
                ax.errorbar(x * dodge, y, yerr=error, marker="o", capsize=3, color=colours[key],
                            label=" / ".join(key))
            ax.set_xscale("log")
            ax.set_xticks(sorted(budgets))
            ax.xaxis.set_major_formatter(ScalarFormatter())
            ax.xaxis.set_minor_formatter(NullFormatter())
            where = textwrap.fill(f"{setting_label(setting)}, {dataset_label(dataset, setting[0])}", 60)
            ax.set_title(f"{STRUCTURE_LABELS[structure]} {METRICS[metric]}\n{where}", fontsize=9)
            ax.set_xlabel("annotated slices" + (f" (x {minutes_per_slice:g} min each)" if minutes_per_slice else ""))
            ax.set_ylabel(f"{METRICS[metric]} (%)")
            ax.grid(alpha=0.3)
        for ax in row_axes[len(cells):]:
            ax.set_visible(False)
    axes[0][0].legend(fontsize=8)
    figure.savefig(path, dpi=110)


def efficiency_markdown(rows: list[dict], plot: str) -> str:
    """The report's section: the plot and its table (mean with 95% interval, in %)."""
    minutes = any(not math.isnan(row["minutes"]) for row in rows)
    head = ["setting / test set", "method", "line", "cases", "slices/case", "slices drawn",
            *(["minutes"] if minutes else []), "structure", "metric", "mean [95% CI] (%)", "runs"]
    lines = ["## Annotation efficiency", "",
             "Score against the annotation the training labels cost: each point is the mean over its runs (seeds x "
             "folds) of each run's mean over test cases, with a 95% t-interval; slices drawn is the mean over those "
             "runs.", "", f"![annotation efficiency]({plot})", "",
             "| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for row in rows:
        setting = (row["task"], row["source"], row["subtask"], row["variant"])
        interval_text = ("" if math.isnan(row["ci95_low"])
                         else f" [{100 * row['ci95_low']:.1f}, {100 * row['ci95_high']:.1f}]")
        cells = [f"{setting_label(setting)}, {dataset_label(row['dataset'], row['task'])}", row["method"], row["line"],
                 str(row["labelled_cases"]), str(row["slices_per_case"]), f"{row['annotated_slices']:.0f}",
                 *([f"{row['minutes']:.0f}"] if minutes else []), STRUCTURE_LABELS[row["structure"]],
                 METRICS[row["metric"]], f"{100 * row['mean']:.1f}{interval_text}", str(row["runs"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"

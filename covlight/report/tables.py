"""Per-case results aggregated into the benchmark's tables, beside the published nnU-Net baselines.

Each number is mean ± std in % over test cases (`covlight.metrics.results.stats`: population std, as the
benchmark's summaries), NaN cases left out and counted. "Pooled" is over every case of every fold and seed of
a method; "per fold" over the cases of one fold (all its seeds). A structure that no case of a test set scores
(all NaN, e.g. the lungs on MosMed, whose truth annotates infection only) is left out of that set's table.
Aggregated rows are "long": one per (task, source, subtask, variant, name[, fold], dataset, structure,
metric).

A semi-automatic method's rows carry its annotation cost, read from its runs' annotation.json: the slices drawn per
test scan (and the scribble strokes, in scribble mode). A network draws nothing on a test scan (its cost is the
fully labelled training scans), so its cost cells are empty (`–` in the tables).
"""

from __future__ import annotations

import math
from collections import defaultdict
from functools import cache

from covlight.benchmark import COVID, MOSMED, STRUCTURES, SUBTASKS, TASKS, source_splits
from covlight.benchmark import columns as metric_columns
from covlight.metrics.results import stats
from covlight.report.baselines import published_table
from covlight.report.collect import Collection, Run, setting_label

IN_DOMAIN = "in-domain"  # the training source's own held-out cases (task2/task3), e.g. structseg_lung
METRICS = {"dsc": "DSC", "nsd": "NSD"}  # ours -> the published files' name
BASELINES = {"2D": "2D U-Net (nnU-Net)", "3D": "3D U-Net (nnU-Net)"}  # column key -> published `model`

# Where our runs meet the published rows (covlight/resources/baselines; see baselines.py).
# (task, source, subtask, split) -> (summary `setting`, per-fold `setting`, per-fold `training_source`).
# - split "official" serves the patient-grouped variant too (same training; a fold that straddles the twin
#   scans scores one case fewer, which the report notes); "train80" is task1's 80%-training variant,
#   published per fold only (3D; no lung-only rows).
# - The summary puts a source's lung and infection models under one setting (Task2-StructSeg = StructSeg lungs
#   + StructSeg GTV); its structure column tells them apart. task3 MSD lungs (masks released after the paper's
#   task2) have a summary row but no per-fold table.
# - Absent keys (source=all, task2 MSD lungs, custom tasks) have no published row: the report shows "–".
_COVID4 = "COVID-19-CT-Seg(4)"
PUBLISHED_SETTINGS: dict[tuple, tuple[str | None, str | None, str | None]] = {
    ("task1", None, "lung", "official"): ("Task1-Separate", "20pct_train_lung_subtask", _COVID4),
    ("task1", None, "infection", "official"): ("Task1-Separate", "20pct_train_infection_subtask", _COVID4),
    ("task1", None, "lung_infection", "official"):
        ("Task1-Union", "20pct_train_lung_and_infection_subtask", _COVID4),
    ("task1", None, "infection", "train80"): (None, "80pct_train_infection_subtask", "COVID-19-CT-Seg(16)"),
    ("task1", None, "lung_infection", "train80"):
        (None, "80pct_train_lung_and_infection_subtask", "COVID-19-CT-Seg(16)"),
    ("task2", "structseg", "lung", "official"): ("Task2-StructSeg", "lung_subtask", "StructSeg Lung"),
    ("task2", "structseg", "infection", "official"):
        ("Task2-StructSeg", "infection_subtask", "StructSeg Gross Target"),
    ("task2", "nsclc", "lung", "official"): ("Task2-NSCLC", "lung_subtask", "NSCLC Lung"),
    ("task2", "nsclc", "infection", "official"): ("Task2-NSCLC", "infection_subtask", "NSCLC-PE"),
    ("task2", "msd", "infection", "official"): ("Task2-MSD", "infection_subtask", "MSD Lung Tumor"),
    ("task3", "structseg", "lung", "official"):
        ("Task3-StructSeg", "lung_subtask", f"StructSeg Lung + {_COVID4}"),
    ("task3", "structseg", "infection", "official"):
        ("Task3-StructSeg", "infection_subtask", f"StructSeg Gross Target + {_COVID4}"),
    ("task3", "nsclc", "lung", "official"): ("Task3-NSCLC", "lung_subtask", f"NSCLC Lung + {_COVID4}"),
    ("task3", "nsclc", "infection", "official"):
        ("Task3-NSCLC", "infection_subtask", f"NSCLC-PE + {_COVID4}"),
    ("task3", "msd", "lung", "official"): ("Task3-MSD", None, None),
    ("task3", "msd", "infection", "official"):
        ("Task3-MSD", "infection_subtask", f"MSD Lung Tumor + {_COVID4}"),
}
# (task, split, test set) -> (summary `eval_set`, per-fold `eval_set`); None = not published.
EVAL_SETS: dict[tuple[str, str, str], tuple[str | None, str | None]] = {
    ("task1", "official", COVID): ("COVID-19-CT-Seg", "COVID-19-CT-Seg held-out(16)"),
    ("task1", "official", MOSMED): ("MosMed(50)", None),
    ("task1", "train80", COVID): (None, "COVID-19-CT-Seg held-out(4)"),
    ("task2", "official", COVID): ("COVID-19-CT-Seg", "test_COVID-19-CT-Seg(20)"),
    ("task2", "official", MOSMED): ("MosMed(50)", None),
    ("task2", "official", IN_DOMAIN): (None, "validation"),
    ("task3", "official", COVID): ("COVID-19-CT-Seg", "test_COVID-19-CT-Seg(16)"),
    ("task3", "official", MOSMED): ("MosMed(50)", None),
    ("task3", "official", IN_DOMAIN): (None, "validation"),
}

SUBTASK_ORDER = tuple(SUBTASKS)
STRUCTURE_LABELS = {"left_lung": "Left lung", "right_lung": "Right lung", "infection": "Infection"}
DATASET_LABELS = {COVID: "COVID-19-CT-Seg", MOSMED: "MosMed"}
IDENTITY_COLUMNS = ["task", "source", "subtask", "variant", "name"]
STAT_COLUMNS = ["dataset", "structure", "metric", "mean", "std", "n", "nan"]
BASELINE_COLUMNS = [f"{kind}_{dims.lower()}{suffix}" for dims in BASELINES
                    for kind, suffix in (("published", "_mean"), ("published", "_std"), ("diff", ""))]
COST_COLUMNS = ["interaction", "slices_per_scan", "strokes_per_scan"]  # a semi-automatic method's annotation cost
SUMMARY_COLUMNS = [*IDENTITY_COLUMNS, *STAT_COLUMNS, "folds", "runs", *COST_COLUMNS, *BASELINE_COLUMNS]
PER_FOLD_COLUMNS = [*IDENTITY_COLUMNS, "fold", *STAT_COLUMNS, "seeds", "runs", *COST_COLUMNS, *BASELINE_COLUMNS]
CASE_COLUMNS = [*IDENTITY_COLUMNS, "model", "fold", "seed", "run", "Name", "dataset", *metric_columns(STRUCTURES)]


# ------------------------------------------------------------------------------------------ published
@cache
def _published_index() -> dict[tuple, tuple[float | None, float | None]]:
    """(task, model, setting, training_source, fold, eval_set, structure, metric) -> (mean, std) in %."""
    columns = ("model", "setting", "training_source", "fold", "eval_set", "structure", "metric")
    return {(row["task"].lower(), *(row[column] for column in columns)): (row["mean"], row["std"])
            for row in published_table()}


def eval_kind(dataset: str, source: str | None, subtask: str) -> str | None:
    """COVID, MOSMED, IN_DOMAIN (the source's held-out set for this subtask) or None (no published set)."""
    if dataset in (COVID, MOSMED):
        return dataset
    in_domain = source_splits("task3").get((source, subtask))
    return IN_DOMAIN if in_domain is not None and dataset == in_domain[1] else None


def published(dims: str, setting: tuple, dataset: str, structure: str, metric: str,
              fold: int | None = None, pooled: bool = True) -> tuple[float | None, float | None]:
    """The published (mean, std) in % of nnU-Net `dims` ("2D"/"3D") for our cell; (None, None) if none.

    Pooled cells come from the summary table (2D and 3D); where it has no row (in-domain sets, task1's 80%
    variant), from the 3D per-fold files' pooled rows ("Avg" over folds, or task2's "single_split"). Per-fold
    cells come from the 3D per-fold files only (the benchmark publishes no 2D per-fold numbers).
    """
    task, source, subtask, variant = setting
    split = "train80" if variant.startswith("train80") else "official"
    settings = PUBLISHED_SETTINGS.get((task, source, subtask, split))
    eval_sets = EVAL_SETS.get((task, split, eval_kind(dataset, source, subtask) or ""))
    if settings is None or eval_sets is None:
        return None, None
    (summary_setting, fold_setting, training_source), (summary_eval, fold_eval) = settings, eval_sets
    index, model = _published_index(), BASELINES[dims]
    if pooled and summary_setting and summary_eval:
        key = (task, model, summary_setting, "", "mean_over_cases", summary_eval, structure, METRICS[metric])
        return index.get(key, (None, None))
    if not fold_setting or not fold_eval:
        return None, None
    fold_name = "single_split" if task == "task2" else "Avg" if pooled else f"Fold{fold}"
    key = (task, model, fold_setting, training_source, fold_name, fold_eval, structure, METRICS[metric])
    return index.get(key, (None, None))


# ------------------------------------------------------------------------------------------ aggregation
def percent_stats(values: list[float]) -> dict:
    """`covlight.metrics.results.stats` with mean and std in %."""
    summary = stats(values)
    return summary | {"mean": 100 * summary["mean"], "std": 100 * summary["std"]}


def aggregate(runs: list[Run], per_fold: bool = False) -> list[dict]:
    """Long rows: our stats per (method[, fold], dataset, structure, metric) and the published cells."""
    groups: dict[tuple, list[tuple[Run, dict]]] = defaultdict(list)
    for run in runs:
        for case in run.cases:
            groups[(run.method, run.fold if per_fold else None, case["dataset"])].append((run, case))
    rows = []
    for (method, fold, dataset), items in sorted(groups.items(), key=lambda item: benchmark_order(*item[0])):
        used = list({id(run): run for run, _ in items}.values())
        about = dict(zip(IDENTITY_COLUMNS, method, strict=True)) | {
            "fold": fold, "dataset": dataset, "runs": len(used),
            "folds": _join({run.fold for run in used}), "seeds": _join({run.seed for run in used})}
        about |= annotation_cost(used)
        for structure, spec in STRUCTURES.items():
            values = {metric: [case.get(spec.column(metric), math.nan) for _, case in items] for metric in METRICS}
            if all(math.isnan(value) for metric_values in values.values() for value in metric_values):
                continue
            for metric, metric_values in values.items():
                row = about | {"structure": structure, "metric": metric} | percent_stats(metric_values)
                for dims in BASELINES:
                    mean, std = published(dims, method[:4], dataset, structure, metric, fold, not per_fold)
                    diff = None if mean is None or math.isnan(row["mean"]) else row["mean"] - mean
                    key = dims.lower()
                    row |= {f"published_{key}_mean": mean, f"published_{key}_std": std, f"diff_{key}": diff}
                rows.append(row)
    return rows


def annotation_cost(runs: list[Run]) -> dict:
    """The mean slices and strokes drawn per test scan over `runs` (semi-automatic), or empty cells (networks)."""
    efforts = [run.annotation for run in runs if run.annotation is not None]
    if not efforts:
        return dict.fromkeys(COST_COLUMNS)
    return {"interaction": "/".join(sorted({effort["mode"] for effort in efforts})),
            "slices_per_scan": sum(effort["slices_per_scan"] for effort in efforts) / len(efforts),
            "strokes_per_scan": sum(effort["strokes_per_scan"] for effort in efforts) / len(efforts)}


def cost_text(row: dict) -> str:
    """'3 slices', '3 slices, 41.5 strokes' (scribbles) or '–' (a network)."""
    if row["slices_per_scan"] is None:
        return "–"
    text = f"{row['slices_per_scan']:g} slice{'' if row['slices_per_scan'] == 1 else 's'}"
    return f"{text}, {row['strokes_per_scan']:.1f} strokes" if row["interaction"] == "scribbles" else text


def case_rows(runs: list[Run]) -> list[dict]:
    """Every per-case row with its run's identity (cases.csv)."""
    rows = []
    for run in runs:
        identity = dict(zip(IDENTITY_COLUMNS, run.method, strict=True))
        identity |= {"model": run.model, "fold": run.fold, "seed": run.seed, "run": str(run.path)}
        rows += [identity | case for case in run.cases]
    return rows


def _join(values: set) -> str:
    return ";".join(str(value) for value in sorted(value for value in values if value is not None))


def benchmark_order(method: tuple, fold: int | None, dataset: str) -> tuple:
    """The benchmark's order: task, source, subtask, variant, test set (COVID, MosMed, others), fold, name."""
    task, source, subtask, variant, name = method
    subtask_rank = SUBTASK_ORDER.index(subtask) if subtask in SUBTASK_ORDER else len(SUBTASK_ORDER)
    dataset_rank = (0 if dataset == COVID else 1 if dataset == MOSMED else 2, dataset)
    fold_rank = -1 if fold is None else fold
    return task, source or "", subtask_rank, subtask, variant, dataset_rank, fold_rank, name


def dataset_label(dataset: str, task: str) -> str:
    if task not in TASKS:  # a custom task: its folds' held-out cases
        return f"{dataset} (cross-validation held-out)"
    return DATASET_LABELS.get(dataset, f"{dataset} (in-domain held-out)")


def markdown_tables(rows: list[dict], per_fold: bool) -> str:
    """One Markdown table per (setting, test set): our methods, the published baselines, and Δ rows."""
    digits = 2 if per_fold else 1
    sections: dict[tuple, list[dict]] = defaultdict(list)
    for row in rows:
        sections[(row["task"], row["source"], row["subtask"], row["variant"], row["dataset"])].append(row)
    out = []
    for (*setting, dataset), section in sections.items():
        structures = [s for s in STRUCTURES if any(row["structure"] == s for row in section)]
        cells = [(s, m) for s in structures for m in METRICS]
        header = ["fold", "method", "seeds"] if per_fold else ["method", "folds", "runs"]
        header.insert(header.index("method") + 1, "drawn per test scan")
        header += ["cases", *(f"{STRUCTURE_LABELS[s]} {METRICS[m]}" for s, m in cells)]
        lines = [f"### {setting_label(tuple(setting))} — {dataset_label(dataset, setting[0])}", "",
                 "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for fold in sorted({row["fold"] for row in section}, key=lambda fold: -1 if fold is None else fold):
            at_fold = [row for row in section if row["fold"] == fold]
            lines += _fold_lines(at_fold, cells, digits, per_fold)
        out.append("\n".join(lines))
    return "\n\n".join(out)


def _fold_lines(rows: list[dict], cells: list[tuple], digits: int, per_fold: bool) -> list[str]:
    """Table lines of one fold (or of the pooled table): methods, published rows, then ours − published."""
    by_name: dict[str, dict[tuple, dict]] = defaultdict(dict)
    for row in rows:
        by_name[row["name"]][(row["structure"], row["metric"])] = row
    first = {}  # the published cells are the same in every method's row: take the first
    for row in rows:
        first.setdefault((row["structure"], row["metric"]), row)
    lead = [] if not per_fold else ["–" if rows[0]["fold"] is None else str(rows[0]["fold"])]
    lines = []
    for name, row_of in sorted(by_name.items()):
        any_row = next(iter(row_of.values()))
        cases = max(row["n"] + row["nan"] for row in row_of.values())
        folds = any_row["folds"].replace(";", ", ") or "–"
        meta = [any_row["seeds"]] if per_fold else [folds, str(any_row["runs"])]
        lines.append(_line([*lead, name, cost_text(any_row), *meta, str(cases)],
                           [_ours(row_of.get(c), digits) for c in cells]))
    if rows[0]["task"] not in TASKS:
        return lines  # a custom task: nothing was published for it
    for dims in BASELINES if not per_fold else ("3D",):
        key = dims.lower()
        published_cells = [first.get(c, {}).get(f"published_{key}_mean") for c in cells]
        if per_fold and all(value is None for value in published_cells):
            continue  # per fold, a baseline row only where the benchmark published that fold
        blanks = ["", ""] if per_fold else ["", "", ""]
        texts = [_published(first.get(c), key, digits) for c in cells]
        lines.append(_line([*lead, f"nnU-Net {dims} (published)", *blanks, ""], texts))
        if all(value is None for value in published_cells):
            continue
        for name, row_of in sorted(by_name.items()):
            diffs = [_diff((row_of.get(c) or {}).get(f"diff_{key}"), digits) for c in cells]
            lines.append(_line([*lead, f"{name} − nnU-Net {dims}", *blanks, ""], diffs))
    return lines


def _line(lead: list[str], cells: list[str]) -> str:
    return "| " + " | ".join([*lead, *cells]) + " |"


def _ours(row: dict | None, digits: int) -> str:
    if row is None:
        return ""
    text = "–" if math.isnan(row["mean"]) else f"{row['mean']:.{digits}f} ± {row['std']:.{digits}f}"
    return f"{text} ({row['nan']} NaN)" if row["nan"] else text


def _published(row: dict | None, key: str, digits: int) -> str:
    mean = None if row is None else row[f"published_{key}_mean"]
    return "–" if mean is None else f"{mean:.{digits}f} ± {row[f'published_{key}_std']:.{digits}f}"


def _diff(value: float | None, digits: int) -> str:
    return "–" if value is None else f"{value:+.{digits}f}"


def report_markdown(collection: Collection, summary: list[dict], per_fold: list[dict], roots: list[str],
                    plots: dict[str, str]) -> str:
    """The whole report: coverage, pooled tables, per-fold tables, plots, notes."""
    runs, skipped = collection.runs, collection.skipped
    methods = sorted({run.method for run in runs})
    lines = [
        "# covlight report", "",
        f"Finished runs: {len(runs)} ({len(methods)} methods) under {', '.join(f'`{r}`' for r in roots)}; "
        f"skipped run folders: {len(skipped)}.", "",
        "Mean ± std in % over test cases (population std); cases with NaN (structure absent from both truth "
        "and prediction) are left out and counted as `(k NaN)`. Published rows are the benchmark's nnU-Net "
        "baselines (Ma et al., Medical Physics 2021); `ours − published` is the difference of the means in "
        "percentage points; `–` means not published (or not computable).", "",
        "`drawn per test scan` is a semi-automatic method's annotation cost: the axial slices of each test scan "
        "its simulated user labels (and the scribble strokes, in scribble mode); those slices are left out of its "
        "scores. A network draws nothing on a test scan (`–`): it was trained on fully labelled scans.", "",
        "## Coverage", "",
    ]
    if collection.missing:
        lines += ["Missing runs:", "", *(f"- {line}" for line in collection.missing), ""]
    if skipped:
        lines += ["Skipped run folders:", "", *(f"- `{s.path}`: {s.reason}" for s in skipped), ""]
    if not collection.missing and not skipped:
        lines += ["Every expected fold has a finished run; no run folder was skipped.", ""]
    processed = [run for run in runs if run.postprocess]
    if processed:
        lines += ["Post-processed runs (their test predictions were post-processed before scoring):", "",
                  *(f"- `{run.path}`: {run.postprocess}" for run in processed), ""]
    lines += ["## Summary: all folds pooled", "", markdown_tables(summary, per_fold=False), "",
              "## Per fold", "",
              "The benchmark publishes per-fold numbers of the 3D U-Net only.", "",
              markdown_tables(per_fold, per_fold=True), "",
              "## Per-case distributions", ""]
    lines += [f"![{title}]({file})\n" for title, file in plots.items()]
    lines += ["## Notes", "",
              "- Published numbers are shown as printed, including two typos in the per-fold tables: Task1 "
              "fold 4 left-lung DSC std 75.97 (\"0.8833±0.7597\") and Task3 StructSeg-GTV fold 1 NSD "
              "\"00.7605\".",
              "- Pooled published cells come from the README summary table; where it has none (in-domain "
              "held-out sets, task1's 80% variant) from the 3D per-fold tables' pooled rows."]
    if any(run.variant.endswith("grouped") for run in runs):
        lines.append("- Grouped split variants are compared with the published (ungrouped) folds; a fold "
                     "that straddles the twin scans radiopaedia_10_85902_1/_3 scores one case fewer.")
    lines += ["- Data: `summary.csv`, `per_fold.csv`, `cases.csv` (every per-case row with its run).", ""]
    return "\n".join(lines)

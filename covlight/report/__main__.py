"""`python -m covlight.report RUNS... --out DIR [--force]`: the benchmark report of finished runs.

RUNS are run folders or any folders above them (e.g. outputs/). Writes DIR/report.md (coverage, pooled and
per-fold tables beside the published nnU-Net baselines, plots), DIR/summary.csv, DIR/per_fold.csv,
DIR/cases.csv, DIR/boxplot_dsc.png and DIR/boxplot_nsd.png; when runs trained on an annotation budget
(data.sparse_annotation, covlight.efficiency), also DIR/efficiency.csv and DIR/efficiency.png (score against
annotated slices, 95% intervals) and their section in report.md. Everything is written to a temporary folder next
to DIR and moved into place when whole (report.md last); an existing DIR/report.md is replaced only with
--force. Progress goes to stderr, a short summary table to stdout. A finished run whose metrics.csv cannot be used
(unreadable, cut off, a score outside 0..1, not exactly the test cases of its split) is left out, named in a
warning and in the report, and the exit status is then 1.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import uuid
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from rich import box
from rich.console import Console
from rich.progress import track
from rich.table import Table

from covlight.benchmark import STRUCTURES
from covlight.errors import WORK_FAILED, report_error
from covlight.metrics.results import write_csv
from covlight.report.collect import Collection, collect, setting_label
from covlight.report.efficiency import COLUMNS as EFFICIENCY_COLUMNS
from covlight.report.efficiency import draw_efficiency, efficiency_markdown, efficiency_rows
from covlight.report.plots import draw_boxplots
from covlight.report.tables import (
    CASE_COLUMNS,
    PER_FOLD_COLUMNS,
    SUMMARY_COLUMNS,
    aggregate,
    case_rows,
    dataset_label,
    report_markdown,
)

PROG = "covlight.report"
REPORT_FILE = "report.md"
PLOTS = {"dsc": "boxplot_dsc.png", "nsd": "boxplot_nsd.png"}
EFFICIENCY_PLOT = "efficiency.png"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m covlight.report",
                                     description=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, metavar="RUNS",
                        help="run folders or folders above them")
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="folder for the report")
    parser.add_argument("--force", action="store_true", help=f"replace an existing DIR/{REPORT_FILE}")
    parser.add_argument("--minutes-per-slice", type=float, metavar="M",
                        help="annotation-efficiency curves: also give the annotation spent in minutes at M per slice")
    args = parser.parse_args(argv)
    if args.minutes_per_slice is not None and args.minutes_per_slice <= 0:
        parser.error("--minutes-per-slice must be positive")
    err = Console(stderr=True, highlight=False, soft_wrap=True)

    absent = [str(path) for path in args.runs if not path.is_dir()]
    if absent:
        return report_error(PROG, f"no such folder: {', '.join(absent)}")
    if args.out.exists() and not args.out.is_dir():
        return report_error(PROG, f"--out {args.out} is a file, not a folder")
    if (args.out / REPORT_FILE).exists() and not args.force:
        return report_error(PROG, f"{args.out / REPORT_FILE} exists: pass --force to replace it, "
                                  "or choose another --out")

    collection = collect(args.runs, progress=lambda dirs: _progress(err, dirs))
    roots = [str(path) for path in args.runs]
    refused = [skip for skip in collection.skipped if skip.refused]
    if not collection.runs:
        states = Counter(skip.reason.split(":")[0] for skip in collection.skipped if not skip.refused)
        found = [f"{count} {reason}" for reason, count in states.items()] + [skip.reason for skip in refused]
        return report_error(PROG, f"no finished run with per-case metrics under {', '.join(roots)} "
                                  f"({'; '.join(found) or 'no run folder at all'})")
    for skip in refused:
        err.print(f"{PROG}: warning: finished run left out of the report: {skip.reason}")
    err.print(f"finished runs: {len(collection.runs)}, skipped run folders: {len(collection.skipped)}; "
              "writing tables and plots")
    summary = aggregate(collection.runs)
    write_report(args.out, collection, summary, aggregate(collection.runs, per_fold=True), roots,
                 efficiency_rows(collection.runs, args.minutes_per_slice), args.minutes_per_slice)
    Console().print(summary_table(summary))
    err.print(f"report: {args.out / REPORT_FILE}")
    if refused:
        err.print(f"{len(refused)} finished run(s) refused (listed above and in the report): exit status 1")
        return WORK_FAILED
    return 0


def write_report(out: Path, collection: Collection, summary: list[dict], per_fold: list[dict],
                 roots: list[str], efficiency: list[dict] | None = None, minutes_per_slice: float | None = None) -> None:
    """Write every file into a temporary folder beside `out`, then move them into `out`, report.md last."""
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.parent / f".partial-{out.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    partial.mkdir()  # not tempfile.mkdtemp: its 0700 mode would become the report folder's
    try:
        write_csv(partial / "summary.csv", summary, SUMMARY_COLUMNS)
        write_csv(partial / "per_fold.csv", per_fold, PER_FOLD_COLUMNS)
        write_csv(partial / "cases.csv", case_rows(collection.runs), CASE_COLUMNS)
        for metric, file in PLOTS.items():
            draw_boxplots(collection.runs, metric, partial / file)
        titles = {f"Per-case {metric.upper()}": file for metric, file in PLOTS.items()}
        markdown = report_markdown(collection, summary, per_fold, roots, titles)
        if efficiency:
            write_csv(partial / "efficiency.csv", efficiency, EFFICIENCY_COLUMNS)
            draw_efficiency(efficiency, partial / EFFICIENCY_PLOT, minutes_per_slice)
            markdown += "\n" + efficiency_markdown(efficiency, EFFICIENCY_PLOT)
        (partial / REPORT_FILE).write_text(markdown, encoding="utf-8")
        if not out.exists():
            os.replace(partial, out)
            return
        (out / REPORT_FILE).unlink(missing_ok=True)  # until the new one lands, the folder does not look complete
        for file in sorted(os.listdir(partial), key=lambda name: name == REPORT_FILE):
            os.replace(partial / file, out / file)
    finally:
        shutil.rmtree(partial, ignore_errors=True)


def summary_table(summary: list[dict]) -> Table:
    """Pooled DSC/NSD means per setting, test set and method, narrow enough for 80 columns (the full
    tables are in report.md)."""
    table = Table(title="pooled mean DSC/NSD (%) over test cases", box=box.SIMPLE_HEAD)
    table.add_column("setting / test set")
    table.add_column("method")
    for column in ("cases", "L lung", "R lung", "lesion"):
        table.add_column(column, justify="right")
    keyed: dict[tuple, dict] = {}
    for row in summary:
        key = ((row["task"], row["source"], row["subtask"], row["variant"]), row["dataset"], row["name"])
        keyed.setdefault(key, {})[(row["structure"], row["metric"])] = row
    for (setting, dataset, name), cells in keyed.items():
        cases = max(row["n"] + row["nan"] for row in cells.values())
        texts = ["/".join(_mean(cells.get((structure, metric))) for metric in ("dsc", "nsd"))
                 if (structure, "dsc") in cells else "" for structure in STRUCTURES]
        table.add_row(f"{setting_label(setting)}\n{dataset_label(dataset, setting[0])}", name, str(cases), *texts)
    return table


def _mean(row: dict | None) -> str:
    return "–" if row is None or row["n"] == 0 else f"{row['mean']:.1f}"


def _progress(err: Console, run_dirs: list) -> Iterable:
    """A progress bar over the run folders on a terminal, one line otherwise (logs stay readable)."""
    err.print(f"reading {len(run_dirs)} run folder(s)")
    if not err.is_terminal:
        return run_dirs
    return track(run_dirs, description="reading runs", console=err, transient=True)


if __name__ == "__main__":
    sys.exit(main())

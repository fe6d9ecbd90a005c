"""`make demo`: synthetic phantoms -> train and test the `demo` recipe -> per-structure table beside a trivial
threshold baseline, with the bars the demo must meet."""

from __future__ import annotations

import argparse
import csv
import math
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
from rich.console import Console
from rich.table import Table

from covlight.baseline import threshold_baseline
from covlight.config import identity_parts, read_status
from covlight.data.canonical import read_dataset
from covlight.data.splits import COVID, official_split
from covlight.data.synthetic import write_phantom_dataset
from covlight.errors import WORK_FAILED, CovlightError, report_error
from covlight.metrics import STRUCTURES, score_case
from covlight.report.__main__ import main as report_main

BARS = {"L-lungDSC": 0.90, "R-lungDSC": 0.90, "LesionDSC": 0.50}
STRUCTURE_NAMES = ["left_lung", "right_lung", "infection"]
PROG = "covlight.demo"


def demo_runs(output_root: Path) -> Path:
    """The folder holding the demo recipe's runs."""
    return output_root.joinpath(*identity_parts("task1", None, "lung_infection", "demo", 0, 0))


def newest_finished_run(parent: Path) -> Path | None:
    finished = [d for d in sorted(parent.glob("*")) if read_status(d).get("state") == "finished"]
    return finished[-1] if finished else None


def model_rows(run_dir: Path) -> list[dict]:
    with open(run_dir / "metrics.csv") as handle:
        return [{k: (v if k in ("Name", "dataset") else float(v)) for k, v in row.items()}
                for row in csv.DictReader(handle)]


def baseline_rows(dataset_root: Path, case_ids: list[str]) -> list[dict]:
    dataset = read_dataset(dataset_root)
    rows = []
    for case_id in case_ids:
        image = nib.load(dataset.image_path(case_id))
        truth = np.asarray(nib.load(dataset.label_path(case_id)).dataobj, dtype=np.uint8)
        spacing = tuple(float(s) for s in image.header.get_zooms()[:3])
        prediction = threshold_baseline(np.asarray(image.dataobj, dtype=np.float32), spacing)
        rows.append({"Name": case_id, **score_case(prediction, truth, spacing, structures=STRUCTURE_NAMES)})
    return rows


def mean_std(rows: list[dict], column: str) -> tuple[float, float]:
    values = [row[column] for row in rows if not math.isnan(row[column])]
    return (float(np.mean(values)), float(np.std(values))) if values else (math.nan, math.nan)


def comparison_table(model: list[dict], baseline: list[dict]) -> tuple[Table, bool]:
    table = Table(title="demo: task1 fold 0 on phantoms (16 test cases), model vs trivial baseline")
    for name in ("metric", "model", "baseline", "bar", "ok"):
        table.add_column(name, justify="left" if name == "metric" else "right")
    passed = True
    for structure in STRUCTURES.values():
        for column in (structure.dsc_column, structure.nsd_column):
            model_mean, model_std = mean_std(model, column)
            base_mean, base_std = mean_std(baseline, column)
            ok = model_mean > base_mean and model_mean >= BARS.get(column, 0.0)
            passed &= ok
            bar = f">= {BARS[column]:.2f}" if column in BARS else "> baseline"
            table.add_row(column, f"{model_mean:.4f} ± {model_std:.4f}", f"{base_mean:.4f} ± {base_std:.4f}", bar,
                          "yes" if ok else "NO")
    return table, passed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", default="demo_data", help="where the phantom datasets are written")
    parser.add_argument("--outputs", default="outputs", help="where runs land")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for the run")
    args = parser.parse_args(argv)
    console = Console()
    start = time.perf_counter()
    dataset_root = Path(args.data) / COVID
    if not (dataset_root / "dataset.json").is_file():
        console.print(f"[bold]generating 20 phantom CT cases in {dataset_root}[/bold]")
        try:
            write_phantom_dataset(dataset_root, cases=20, seed=0)
        except CovlightError as error:
            return report_error(PROG, error)
    command = [sys.executable, "-m", "covlight", "experiment=demo", f"paths.data_dir={args.data}",
               f"paths.output_root={args.outputs}", *args.overrides]
    console.print(f"[bold]training and testing:[/bold] {' '.join(command[1:])}")
    run = subprocess.run(command)
    if run.returncode != 0:
        return run.returncode  # the run printed why: 2 for a user's mistake, 1 when the work failed
    runs = demo_runs(Path(args.outputs))
    run_dir = newest_finished_run(runs)
    if run_dir is None:
        return report_error(PROG, f"no finished demo run under {runs}", WORK_FAILED)
    test_cases = official_split("task1", "lung_infection", 0).test[COVID]
    table, passed = comparison_table(model_rows(run_dir), baseline_rows(dataset_root, test_cases))
    console.print(table)
    report_main([str(run_dir), "--out", str(run_dir / "report")])
    console.print(f"run folder: {run_dir}   report: {run_dir / 'report' / 'report.md'}")
    console.print(f"total time: {time.perf_counter() - start:.0f} s   {'all bars met' if passed else 'BARS NOT MET'}")
    return 0 if passed else WORK_FAILED


if __name__ == "__main__":
    sys.exit(main())

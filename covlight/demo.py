"""`make demo`: synthetic phantoms -> train and test the `demo` recipe -> per-structure table beside a trivial
threshold baseline, with the bars the demo must meet."""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
from rich.console import Console
from rich.table import Table

from covlight.baseline import threshold_baseline
from covlight.benchmark import COVID, METRICS_FILE, STRUCTURES, columns
from covlight.config import identity_parts, read_status
from covlight.data.canonical import read_dataset
from covlight.data.synthetic import write_phantom_dataset
from covlight.errors import WORK_FAILED, CovlightError, report_error
from covlight.metrics import score_case
from covlight.metrics.results import CaseResults
from covlight.report.__main__ import main as report_main
from covlight.splits import official_split

BARS = {STRUCTURES[name].dsc_column: bar
        for name, bar in (("left_lung", 0.90), ("right_lung", 0.90), ("infection", 0.50))}
PROG = "covlight.demo"


def demo_runs(output_root: Path) -> Path:
    """The folder holding the demo recipe's runs."""
    return output_root.joinpath(*identity_parts("task1", None, "lung_infection", "demo", 0, 0))


def newest_finished_run(parent: Path) -> Path | None:
    finished = [d for d in sorted(parent.glob("*")) if read_status(d).get("state") == "finished"]
    return finished[-1] if finished else None


def baseline_results(dataset_root: Path, case_ids: list[str]) -> CaseResults:
    dataset = read_dataset(dataset_root)
    results = CaseResults(columns(STRUCTURES), keys=("Name",))
    for case_id in case_ids:
        image = nib.load(dataset.image_path(case_id))
        truth = np.asarray(nib.load(dataset.label_path(case_id)).dataobj, dtype=np.uint8)
        spacing = tuple(float(s) for s in image.header.get_zooms()[:3])
        prediction = threshold_baseline(np.asarray(image.dataobj, dtype=np.float32), spacing)
        results.append({"Name": case_id, **score_case(prediction, truth, spacing, structures=STRUCTURES)})
    return results


def comparison_table(model: CaseResults, baseline: CaseResults) -> tuple[Table, bool]:
    table = Table(title="demo: task1 fold 0 on phantoms (16 test cases), model vs trivial baseline")
    for name in ("metric", "model", "baseline", "bar", "ok"):
        table.add_column(name, justify="left" if name == "metric" else "right")
    passed = True
    model_stats, baseline_stats = model.column_stats(), baseline.column_stats()
    for column in columns(STRUCTURES):
        ours, base = model_stats[column], baseline_stats[column]
        ok = ours["mean"] > base["mean"] and ours["mean"] >= BARS.get(column, 0.0)
        passed &= ok
        bar = f">= {BARS[column]:.2f}" if column in BARS else "> baseline"
        table.add_row(column, f"{ours['mean']:.4f} ± {ours['std']:.4f}", f"{base['mean']:.4f} ± {base['std']:.4f}",
                      bar, "yes" if ok else "NO")
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
    model = CaseResults.read(run_dir / METRICS_FILE)
    table, passed = comparison_table(model, baseline_results(dataset_root, test_cases))
    console.print(table)
    report_main([str(run_dir), "--out", str(run_dir / "report")])
    console.print(f"run folder: {run_dir}   report: {run_dir / 'report' / 'report.md'}")
    console.print(f"total time: {time.perf_counter() - start:.0f} s   {'all bars met' if passed else 'BARS NOT MET'}")
    return 0 if passed else WORK_FAILED


if __name__ == "__main__":
    sys.exit(main())

"""`python -m covlight.evaluate --pred DIR --gt DIR`: per-case DSC and NSD of a folder of predicted label maps.

The numbers and columns are those of the benchmark's evaluation script (`COVID-19-Seg-Evaluation.py`): spacing
from the ground truth's NIfTI header, no resampling, DSC and NSD (1 mm for each lung, 3 mm for infection).
`--metrics dsc,nsd,hd95,assd` adds medpy's HD95 and ASSD in mm (columns such as `L-lungHD95`, `LesionASSD`;
NaN when the structure is absent from both masks, inf when from one).

Label formats:
- `canonical` (default): both folders hold covlight's labels (1 left lung, 2 right lung, 3 infection); only the
  structures the ground truth annotates are scored (its `dataset.json`, else `--structures`, else all three).
  `Name` is the case id.
- `benchmark`: the script's rule, for drop-in use: the first ground truth file's maximum label decides the
  structures (1: infection only, stored as 1; 2: left and right lung; anything else: all three), and `Name` is
  the file name, as the script writes it.

Cases are matched by file stem (`.nii.gz` / `.nii` stripped) and scored in sorted order; every ground truth
needs a prediction and every prediction a ground truth (`--cases` scores a subset). The CSV is written under a
temporary name and renamed when whole; an existing CSV is replaced only with `--force`. Its format is
`covlight.metrics.results`' (full-precision floats; NaN, a structure absent from both masks, an empty cell, as
pandas writes it). Exit status: 0 when every case was scored, 1 when a case failed, 2 for unusable arguments.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from covlight.benchmark import BENCHMARK_METRICS, LABELS, METRICS, STRUCTURES, columns, ordered_structures
from covlight.data.canonical import slice_spacing_note
from covlight.errors import WORK_FAILED, CovlightError, DiskFullError, report_error
from covlight.metrics.results import CaseResults, summary_table
from covlight.metrics.structures import score_case

SUFFIXES = (".nii.gz", ".nii")
AFFINE_TOLERANCE_MM = 1e-3
POOL_START_S = 1.0  # about what a pool of spawned scoring processes costs before its first case
# The benchmark script's structures per maximum label of the first ground truth (infection-only files use 1).
BENCHMARK_STRUCTURES = {1: (("infection",), {"infection": 1}), 2: (("left_lung", "right_lung"), {})}
BENCHMARK_DEFAULT = (tuple(STRUCTURES), {})
PROG = "covlight.evaluate"


class CaseError(Exception):
    """One case cannot be scored; the message names the case, the file and the fix."""


@dataclass(frozen=True)
class Job:
    """One case to score."""

    case: str
    name: str  # the CSV's Name
    pred: Path | None
    gt: Path | None
    structures: tuple[str, ...]
    labels: dict = field(default_factory=dict)  # structure -> label value where not canonical
    canonical: bool = True
    metrics: tuple[str, ...] = BENCHMARK_METRICS


def main(argv=None) -> int:
    args = parse_args(argv)
    console = Console(stderr=True, soft_wrap=True)
    out = Path(args.out) if args.out else default_output(Path(args.pred))
    try:
        jobs, structures = plan(args)
        if out.is_dir():
            raise CovlightError(f"--out {out} is a folder: give the CSV's file name (e.g. {out / 'metrics.csv'}).")
        if out.exists() and not args.force:
            raise CovlightError(f"{out} exists: pass --force to replace it, or choose another --out.")
    except CovlightError as error:
        return report_error(PROG, error)
    note = ground_truth_spacing_note(Path(args.gt))
    if note:
        console.print(f"note: {note}")
    rows, failures = run(jobs, args.workers, args.keep_going, console)
    if failures and not args.keep_going:
        case, message = failures[0]
        return report_error(PROG, f"{case}: {message} Nothing was written (--keep-going scores the other cases).",
                            WORK_FAILED)
    results = CaseResults(columns(structures, args.metrics), keys=("Name",), rows=rows)
    if rows:
        try:
            results.write(out)
        except DiskFullError as error:
            return report_error(PROG, error)
        console.print(f"wrote {len(rows)} case(s) to {out}")
    Console().print(summary_table(results.column_stats(),
                                  f"{len(rows)} case(s): mean ± std over cases (NaN ignored)"))
    if failures:
        console.print(f"[red]{len(failures)} case(s) failed and are not in the CSV:[/red]")
        for case, message in failures:
            console.print(f"  {case}: {message}")
        return WORK_FAILED
    return 0


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m covlight.evaluate", fromfile_prefix_chars="@",
        description="Per-case DSC and NSD of predicted label maps, as the benchmark's evaluation script "
                    "(arguments can be read from a file: @args.txt).")
    parser.add_argument("--pred", required=True, help="folder of predicted label maps (.nii.gz)")
    parser.add_argument("--gt", required=True,
                        help="ground truth: a folder of label maps, or a canonical dataset folder "
                             "(labels/ and dataset.json)")
    parser.add_argument("--out", help="CSV to write (default: beside the prediction folder, named after it)")
    parser.add_argument("--force", action="store_true", help="replace the CSV if it exists")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                        help="processes scoring cases in parallel (default: %(default)s)")
    parser.add_argument("--labels", choices=("canonical", "benchmark"), default="canonical",
                        help="label format of both folders (default: %(default)s)")
    parser.add_argument("--structures", nargs="+", choices=list(STRUCTURES),
                        help="canonical labels only: structures to score (default: those the ground truth's "
                             "dataset.json annotates, else all)")
    parser.add_argument("--metrics", default=",".join(BENCHMARK_METRICS), type=metric_list,
                        help=f"comma-separated metrics of each structure, from {','.join(METRICS)} "
                             "(default: %(default)s, the benchmark's columns)")
    parser.add_argument("--cases", nargs="+", metavar="CASE", help="score only these case ids")
    parser.add_argument("--keep-going", action="store_true",
                        help="score the other cases when one fails, list the failures, exit 1")
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    return args


def metric_list(text: str) -> tuple[str, ...]:
    """`--metrics`: known names, in the order of `METRICS` (columns of one structure always come in one order)."""
    names = [name.strip().lower() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in METRICS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"{text!r}: give one or more of {','.join(METRICS)}")
    return tuple(metric for metric in METRICS if metric in names)


def plan(args) -> tuple[list[Job], tuple[str, ...]]:
    """The cases to score and the structures, checked before any scoring starts."""
    pred_dir, gt_dir = Path(args.pred), Path(args.gt)
    if not pred_dir.is_dir():
        raise CovlightError(f"prediction folder {pred_dir} does not exist")
    labels_dir, annotated = ground_truth_folder(gt_dir)
    gt_files, pred_files = label_files(labels_dir), label_files(pred_dir)
    if not gt_files:
        raise CovlightError(f"no ground truth label maps (.nii.gz, .nii) in {labels_dir}")
    cases = sorted(set(gt_files) | set(pred_files))
    if args.cases:
        unknown = [case for case in args.cases if case not in gt_files and case not in pred_files]
        if unknown:
            raise CovlightError(f"--cases names {unknown}, found in neither {labels_dir} nor {pred_dir}")
        cases = sorted(set(args.cases))

    if args.labels == "benchmark":
        if args.structures:
            raise CovlightError("--structures applies to canonical labels; with --labels benchmark the structures "
                                "come from the first ground truth, as in the benchmark's script")
        cases.sort(key=lambda case: gt_files[case].name if case in gt_files else case)
        first = next((gt_files[case] for case in cases if case in gt_files), None)
        if first is None:
            raise CovlightError(f"none of the cases to score has a ground truth in {labels_dir}")
        try:
            maximum = float(np.max(read_labels(first)[0]))
        except CaseError as error:
            raise CovlightError(f"the first ground truth decides the structures, but: {error}") from None
        structures, labels = BENCHMARK_STRUCTURES.get(int(maximum) if maximum.is_integer() else -1,
                                                      BENCHMARK_DEFAULT)
    else:
        structures, labels = canonical_structures(args.structures, annotated, labels_dir), {}

    jobs = []
    for case in cases:
        pred, gt = pred_files.get(case), gt_files.get(case)
        name = (pred or gt).name if args.labels == "benchmark" else case
        jobs.append(Job(case=case, name=name, pred=pred, gt=gt, structures=tuple(structures), labels=labels,
                        canonical=args.labels == "canonical", metrics=args.metrics))
    return jobs, tuple(structures)


def ground_truth_folder(gt_dir: Path) -> tuple[Path, list[str] | None]:
    """The folder holding the ground truth files, and the structures its dataset.json annotates (if any).

    Accepts a canonical dataset folder (`labels/` + `dataset.json`), its `labels/` folder, or a plain folder.
    """
    if not gt_dir.is_dir():
        raise CovlightError(f"ground truth folder {gt_dir} does not exist")
    for root, labels_dir in ((gt_dir, gt_dir / "labels"), (gt_dir.parent, gt_dir)):
        if (root / "dataset.json").is_file() and labels_dir.is_dir() and labels_dir.name == "labels":
            try:
                annotated = json.loads((root / "dataset.json").read_text(encoding="utf-8")).get("annotated")
            except (OSError, json.JSONDecodeError) as error:
                raise CovlightError(f"cannot read {root / 'dataset.json'} ({error}); repair it or re-run the "
                                    "import, or point --gt at the labels folder and pass --structures") from None
            return labels_dir, annotated
    return gt_dir, None


def ground_truth_spacing_note(gt_dir: Path) -> str | None:
    """A canonical slice set without a pixel spacing is scored with spacing 1: say so (see slice_spacing_note)."""
    for root in (gt_dir, gt_dir.parent):
        try:
            return slice_spacing_note(json.loads((root / "dataset.json").read_text(encoding="utf-8")))
        except (OSError, ValueError, AttributeError):
            continue
    return None


def canonical_structures(requested, annotated, labels_dir: Path) -> list[str]:
    if annotated is None:
        return ordered_structures(requested or STRUCTURES)
    try:
        annotated = ordered_structures(annotated)
    except ValueError as error:
        raise CovlightError(f"dataset.json beside {labels_dir}: {error}") from None
    if not annotated:
        raise CovlightError(f"dataset.json beside {labels_dir} annotates no structure: nothing to score")
    if requested:
        missing = [name for name in requested if name not in annotated]
        if missing:
            raise CovlightError(f"--structures {missing} not annotated in this dataset (dataset.json: {annotated}); "
                                "scoring them would compare against an empty truth")
        return ordered_structures(requested)
    return annotated


def label_files(folder: Path) -> dict[str, Path]:
    """Case id (file name without .nii.gz / .nii) -> path, for the label maps in `folder`."""
    files = {}
    for path in sorted(folder.iterdir()):
        suffix = next((s for s in SUFFIXES if path.name.endswith(s)), None)
        if suffix and path.is_file() and not path.name.startswith("."):
            files.setdefault(path.name[: -len(suffix)], path)
    return files


def default_output(pred_dir: Path) -> Path:
    resolved = pred_dir.resolve()
    return resolved.with_name(resolved.name + ".csv")


def run(jobs: list[Job], workers: int, keep_going: bool, console: Console):
    """Score the jobs: rows in job order, and (case, message) failures.

    With workers > 1 the cases after the first are scored in processes, unless scoring them here would take less
    than starting the processes (each spawned process imports this module again): small cases are scored faster
    in this process.
    """
    results: dict[int, dict] = {}
    failures: dict[int, tuple[str, str]] = {}
    columns_ = (TextColumn("scoring"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns_, console=console, transient=True) as progress:
        task = progress.add_task("scoring", total=len(jobs))

        def record(index: int, outcome) -> bool:
            progress.advance(task)
            if isinstance(outcome, CaseError):
                failures[index] = (jobs[index].case, str(outcome))
                return keep_going
            results[index] = outcome
            return True

        pending = list(range(len(jobs)))
        in_pool = workers > 1 and len(jobs) > 1
        if in_pool:  # the first case, scored here, tells whether the others are worth a pool's start
            started = time.perf_counter()
            pending = pending[1:] if record(0, score_or_error(jobs[0])) else []
            in_pool = (time.perf_counter() - started) * len(pending) > POOL_START_S
        if not in_pool:
            for index in pending:
                if not record(index, score_or_error(jobs[index])):
                    break
        elif pending:
            # spawn, not fork: the progress bar runs a thread, and forking a threaded process is unsafe
            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(max_workers=min(workers, len(pending)), mp_context=context) as pool:
                futures = {pool.submit(score_or_error, jobs[index]): index for index in pending}
                for future in as_completed(futures):
                    if not record(futures[future], future.result()):
                        for pending in futures:
                            pending.cancel()
                        break
    rows = [results[index] for index in sorted(results)]
    return rows, [failures[index] for index in sorted(failures)]


def score_or_error(job: Job) -> dict | CaseError:
    """A worker's task: the case's row, or its CaseError (returned, so a pool passes it back intact)."""
    try:
        return score_job(job)
    except CaseError as error:
        return error


def score_job(job: Job) -> dict:
    if job.pred is None:
        raise CaseError(f"no prediction for ground truth {job.gt}: write {job.case}.nii.gz into the prediction "
                        "folder, or leave the case out with --cases")
    if job.gt is None:
        raise CaseError(f"no ground truth for prediction {job.pred}: remove it from the prediction folder, or "
                        "leave it out with --cases")
    gt, gt_affine, spacing = read_labels(job.gt)
    pred, pred_affine, _ = read_labels(job.pred)
    if pred.shape != gt.shape:
        raise CaseError(f"prediction {job.pred} has shape {pred.shape}, ground truth {job.gt} {gt.shape}: write "
                        "the prediction on the ground truth's grid (covlight.predict does)")
    difference = float(np.max(np.abs(pred_affine - gt_affine)))
    if difference > AFFINE_TOLERANCE_MM:
        raise CaseError(f"prediction {job.pred} and ground truth {job.gt} differ in geometry (affines differ by "
                        f"up to {difference:.4g}): write the prediction with the ground truth's header")
    if job.canonical:
        for path, data, fix in ((job.gt, gt, "convert it with covlight.prepare"),
                                (job.pred, pred, "write canonical labels (covlight.predict does)")):
            unexpected = unexpected_values(data)
            if unexpected:
                raise CaseError(f"{path} holds label values {unexpected} outside canonical 0..3: {fix}, or pass "
                                "--labels benchmark for the benchmark's label files")
    else:
        gt = gt.astype(np.uint8)  # the script's np.uint8(gt_nii.get_fdata())
    return {"Name": job.name, **score_case(pred, gt, spacing, job.structures, labels=job.labels, metrics=job.metrics)}


def read_labels(path: Path) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    """A label map as stored (no float64 copy of the volume), its affine, and its header spacing.

    Compared with a label value, the stored integers give exactly what the script's `get_fdata()` gives; a
    file with intensity scaling is read through `get_fdata()` itself.
    """
    try:
        image = nib.load(path)
        proxy = image.dataobj
        scaled = getattr(proxy, "slope", 1.0) != 1.0 or getattr(proxy, "inter", 0.0) != 0.0
        data = image.get_fdata() if scaled else np.asanyarray(proxy)
    except Exception as error:  # nibabel raises many kinds for a damaged file
        raise CaseError(f"cannot read {path} ({type(error).__name__}: {error}): re-export the file or remove "
                        "it") from None
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise CaseError(f"{path} has shape {data.shape}: a 3D label map is expected")
    spacing = tuple(float(zoom) for zoom in image.header.get_zooms()[:3])
    return data, image.affine, spacing


def unexpected_values(data: np.ndarray) -> list:
    """Values outside canonical 0..3 (sorted, at most 10); empty when all are canonical."""
    outside = (data < 0) | (data > max(LABELS.values()))
    if not np.issubdtype(data.dtype, np.integer):
        outside |= data != np.round(data)
    if not outside.any():
        return []
    return [value.item() for value in np.unique(data[outside])[:10]]


if __name__ == "__main__":
    sys.exit(main())

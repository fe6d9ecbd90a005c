"""`covlight.evaluate` against the benchmark's own evaluation script, end to end (issue 18).

    python benchmarks/evaluate_speed.py [--out FILE] [--rounds N]

Both score folders of label maps (1 left lung, 2 right lung, 3 infection; spacing from the header) and write
one CSV row per case, each call in a fresh process timed from the outside (interpreter start, imports, reading,
scoring, writing), calls alternating between the two:
- small: 30 cases of 64x64x32 (0.8, 0.8, 2.5 mm) scored in three calls of 10, as a user scores a few folders
  (start-up dominates: the issue's measurement, where the script took 3.4 s and covlight 17 s);
- medium: the same with 128x128x48 cases;
- large: 2 cases of 512x512x200 (0.7, 0.7, 1.0 mm), a CT's size, in one call.
Small and medium: the figure is the sum of the three calls, a median over --rounds; large: one round.
The script is re-implemented faithfully (`COVID-19-Seg-Evaluation.py`, github.com/JunMa11/COVID-19-CT-Seg-
Benchmark): per case, nibabel reads both files (`np.uint8(get_fdata())`), DSC and NSD (1 mm lungs, 3 mm
infection) with DeepMind's `surface-distance` package. It writes its CSV with the csv module where the original
uses pandas (not installed here; pandas would only add its import time to the script). covlight runs with its
defaults (`python -m covlight.evaluate --pred --gt --out`). Agreement: the largest difference between the two
CSVs. Cases: two rough lobes and lesions inside them; the prediction is the truth shifted by one voxel with its
lesions grown. JSON goes to stdout and to --out.
"""

from __future__ import annotations

import argparse
import csv
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import emit, log, machine_info, median

# size -> (shape, spacing mm, cases, cases per call)
SIZES = {"small": ((64, 64, 32), (0.8, 0.8, 2.5), 30, 10), "medium": ((128, 128, 48), (0.8, 0.8, 2.5), 30, 10),
         "large": ((512, 512, 200), (0.7, 0.7, 1.0), 2, 2)}
# (label, tolerance mm, DSC column, NSD column): the script's columns
STRUCTURES = ((1, 1.0, "L-lungDSC", "L-lung-1mm"), (2, 1.0, "R-lungDSC", "R-lung-1mm"),
              (3, 3.0, "LesionDSC", "LesionNSD-3mm"))
CALL_TIMEOUT_S = 3600


# ----------------------------------------------------------------------------------------------- the cases
def labels_pair(shape, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(truth, prediction) label maps: two rough lobes with lesions inside; the prediction shifted and grown."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    coarse = rng.normal(size=tuple(max(2, n // 16) for n in shape)).astype(np.float32)
    rough = ndimage.zoom(coarse, [n / c for n, c in zip(shape, coarse.shape, strict=True)], order=1)
    rough = 0.25 * rough[tuple(slice(0, n) for n in shape)]
    x, y, z = (np.linspace(-1, 1, n, dtype=np.float32).reshape([-1 if a == i else 1 for a in range(3)])
               for i, n in enumerate(shape))
    truth = np.zeros(shape, np.uint8)
    for value, centre in ((1, -0.45), (2, 0.45)):
        truth[((x - centre) / 0.4) ** 2 + (y / 0.7) ** 2 + (z / 0.8) ** 2 <= 1 + rough] = value
    spots = ndimage.zoom(rng.normal(size=tuple(max(2, n // 6) for n in shape)).astype(np.float32),
                         [n / max(2, n // 6) for n in shape], order=1)[tuple(slice(0, n) for n in shape)]
    truth[(spots > np.quantile(spots, 0.97)) & (truth > 0)] = 3
    pred = np.roll(truth, 1, axis=int(rng.integers(3)))
    pred[ndimage.binary_dilation(pred == 3) & (pred > 0)] = 3
    return truth, pred


def write_cases(folder: Path, size: str) -> list[Path]:
    """The size's cases as NIfTI: gt/ and pred/, split into one folder pair per call."""
    import nibabel as nib

    shape, spacing, count, per_call = SIZES[size]
    calls = []
    for call in range(count // per_call):
        root = folder / size / f"call{call}"
        for kind in ("gt", "pred"):
            (root / kind).mkdir(parents=True)
        for index in range(per_call):
            truth, pred = labels_pair(shape, seed=call * per_call + index)
            for kind, labels in (("gt", truth), ("pred", pred)):
                nib.save(nib.Nifti1Image(labels, np.diag([*spacing, 1.0])), root / kind / f"case_{index:03d}.nii.gz")
        calls.append(root)
    return calls


# ------------------------------------------------------------------------------------------- the script
def script_worker(pred_dir: str, gt_dir: str, out: str) -> None:
    """The benchmark's evaluation loop (see the module's doc)."""
    import nibabel as nb
    from surface_distance import (
        compute_dice_coefficient,
        compute_surface_dice_at_tolerance,
        compute_surface_distances,
    )

    names = sorted(name for name in Path(pred_dir).iterdir() if name.name.endswith(".nii.gz"))
    rows = []
    for path in names:
        gt_nii = nb.load(Path(gt_dir) / path.name)
        spacing = gt_nii.header.get_zooms()
        gt = np.uint8(gt_nii.get_fdata())
        seg = np.uint8(nb.load(path).get_fdata())
        row = {"Name": path.name}
        for label, tolerance, dsc_column, nsd_column in STRUCTURES:
            g, s = gt == label, seg == label
            if not g.any() and not s.any():
                row[dsc_column] = row[nsd_column] = math.nan
            elif not g.any() or not s.any():
                row[dsc_column] = row[nsd_column] = 0.0
            else:
                row[dsc_column] = compute_dice_coefficient(g, s)
                row[nsd_column] = compute_surface_dice_at_tolerance(compute_surface_distances(g, s, spacing),
                                                                    tolerance)
        rows.append(row)
    with open(out, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["Name", *(c for s in STRUCTURES for c in s[2:])])
        writer.writeheader()
        writer.writerows(rows)


# ------------------------------------------------------------------------------------------ timing
def timed_call(contender: str, root: Path) -> tuple[float, Path]:
    out = root / f"{contender}.csv"
    out.unlink(missing_ok=True)
    if contender == "covlight":
        command = [sys.executable, "-m", "covlight.evaluate", "--pred", str(root / "pred"), "--gt", str(root / "gt"),
                   "--out", str(out)]
    else:
        command = [sys.executable, __file__, "--worker", "--pred", str(root / "pred"), "--gt", str(root / "gt"),
                   "--csv", str(out)]
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, timeout=CALL_TIMEOUT_S)
    return time.perf_counter() - start, out


def csv_difference(first: Path, second: Path) -> float:
    """The largest absolute difference of the metric cells (NaN equal to NaN), rows matched by case."""
    def read(path):
        with open(path, newline="") as handle:
            return {Path(row.pop("Name")).name.removesuffix(".nii.gz"): row for row in csv.DictReader(handle)}

    a, b = read(first), read(second)
    assert a.keys() == b.keys()
    worst = 0.0
    for case in a:
        for column, text in a[case].items():
            x, y = (float(t) if t not in ("", "nan") else math.nan for t in (text, b[case][column]))
            if math.isnan(x) != math.isnan(y):
                return math.inf
            if not math.isnan(x):
                worst = max(worst, abs(x - y))
    return worst


def benchmark_size(size: str, folder: Path, rounds: int) -> dict:
    shape, spacing, count, per_call = SIZES[size]
    log(f"{size}: writing {count} cases of {shape}")
    calls = write_cases(folder, size)
    totals: dict[str, list[float]] = {"covlight": [], "script": []}
    outputs: dict[str, list[Path]] = {}
    for round_ in range(rounds):
        for contender in ("script", "covlight") if round_ % 2 else ("covlight", "script"):
            seconds = []
            for root in calls:
                elapsed, out = timed_call(contender, root)
                seconds.append(elapsed)
                outputs.setdefault(contender, []).append(out)
            totals[contender].append(sum(seconds))
            log(f"{size} round {round_}: {contender} {sum(seconds):.2f} s ({', '.join(f'{s:.2f}' for s in seconds)})")
    covlight_s, script_s = median(totals["covlight"]), median(totals["script"])
    return {
        "size": size, "shape": list(shape), "spacing_mm": list(spacing), "cases": count, "calls": len(calls),
        "cases_per_call": per_call, "rounds": rounds,
        "covlight_s": covlight_s, "script_s": script_s, "covlight_over_script": covlight_s / script_s,
        "all_rounds_s": totals,
        "max_abs_difference": max(csv_difference(root / "covlight.csv", root / "script.csv") for root in calls),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", help="also write the JSON here")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the small and medium cases (large: 1)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--pred", help=argparse.SUPPRESS)
    parser.add_argument("--gt", help=argparse.SUPPRESS)
    parser.add_argument("--csv", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        script_worker(args.pred, args.gt, args.csv)
        return

    from importlib.metadata import version

    import nibabel

    report = {"machine": machine_info(nibabel=nibabel.__version__, surface_distance=version("surface-distance")),
              "method": __doc__.split("\n\n", 1)[1].strip(), "sizes": []}
    with tempfile.TemporaryDirectory(prefix="covlight-evaluate-speed-") as folder:
        for size in SIZES:
            report["sizes"].append(benchmark_size(size, Path(folder), 1 if size == "large" else args.rounds))
    report["ratio_covlight_over_script"] = {entry["size"]: entry["covlight_over_script"] for entry in report["sizes"]}
    report["bar_no_slower"] = all(ratio <= 1.0 for ratio in report["ratio_covlight_over_script"].values())
    emit(report, args.out)


if __name__ == "__main__":
    main()

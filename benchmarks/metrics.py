"""NSD speed, peak memory and agreement: covlight against surface-distance 0.1 and MONAI (issue 3).

    python benchmarks/metrics.py [--out FILE] [--quick]

Two fixed cases, each at 256x256x128 (spacing 0.8, 0.8, 2.5 mm) and 512x512x300 (0.7, 0.7, 1.0 mm), scored at
tolerances 1 and 3 mm:
- lung: two lobes with irregular borders filling about a third of the volume; the prediction is the truth
  shifted by 2 voxels along the first axis;
- infection: 40 small lesions (radius 2-25 mm, rough borders); the prediction jitters each by up to 2 voxels,
  rescales it by 0.8-1.2, misses about one in ten and adds 6 false positives.
`--quick` runs the 256 size only. Every contender runs in its own process (its peak memory is its own): the
masks are loaded from .npy, then one NSD is timed. covlight is timed on its first call in that process (cold)
and, for reference, the best of two more calls (warm); surface-distance's time is one
`compute_surface_distances` plus `compute_surface_dice_at_tolerance`; MONAI's is one `compute_surface_dice`
(use_subvoxels=True, float32 output). Speedups use covlight's cold time. JSON goes to stdout and to --out.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from common import emit, log, machine_info, run_worker, status_mb
from scipy import ndimage

SIZES = {"256": ((256, 256, 128), (0.8, 0.8, 2.5)), "512": ((512, 512, 300), (0.7, 0.7, 1.0))}
TOLERANCES = (1.0, 3.0)
REQUIRED_SPEEDUP = {"256": 10.0, "512": 20.0}
MEMORY_BAR_MB = {"512": 1536.0}
CONTENDERS = ("covlight", "covlight-torch", "surface-distance", "monai")
WORKER_TIMEOUT_S = 1800


# ----------------------------------------------------------------------------------------------- the cases
def smooth_field(shape, cell: float, rng) -> np.ndarray:
    """Smooth random field (float32, unit-ish amplitude) varying over about `cell` voxels."""
    coarse = rng.normal(size=tuple(max(2, round(n / cell)) for n in shape)).astype(np.float32)
    field = ndimage.zoom(coarse, [n / c for n, c in zip(shape, coarse.shape, strict=True)], order=1)
    return field[tuple(slice(0, n) for n in shape)]


def lung_case(shape, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x, y, z = (np.linspace(0, 1, n, dtype=np.float32).reshape([-1 if a == i else 1 for a in range(3)])
               for i, n in enumerate(shape))
    roughness = 0.25 * smooth_field(shape, 16, rng) + 0.08 * smooth_field(shape, 4, rng)
    gt = np.zeros(shape, bool)
    for centre in (0.27, 0.73):
        gt |= ((x - centre) / 0.2) ** 2 + ((y - 0.5) / 0.4) ** 2 + ((z - 0.5) / 0.45) ** 2 <= 1 + roughness
    pred = np.zeros_like(gt)
    pred[2:] = gt[:-2]
    return gt, pred


def lesion(radii, rng, roughness: float = 0.3) -> np.ndarray:
    half = [int(np.ceil(r * (1 + roughness))) + 1 for r in radii]
    axes = np.meshgrid(*[np.arange(-h, h + 1, dtype=np.float32) / r for h, r in zip(half, radii, strict=True)],
                       indexing="ij", sparse=True)
    distance = sum(a**2 for a in axes)
    return distance <= 1 + roughness * smooth_field(distance.shape, 3, rng)


def paste(volume: np.ndarray, piece: np.ndarray, centre) -> None:
    target, source = [], []
    for c, size, n in zip(centre, piece.shape, volume.shape, strict=True):
        low = c - size // 2
        start, stop = max(low, 0), min(low + size, n)
        if start >= stop:
            return
        target.append(slice(start, stop))
        source.append(slice(start - low, stop - low))
    volume[tuple(target)] |= piece[tuple(source)]


def infection_case(shape, spacing, seed: int = 0, lesions: int = 40) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    gt, pred = np.zeros(shape, bool), np.zeros(shape, bool)
    low, high = np.array(shape) * [0.1, 0.15, 0.1], np.array(shape) * [0.9, 0.85, 0.9]
    for k in range(lesions + 6):  # the last 6 are false positives
        radius_mm = np.exp(rng.uniform(np.log(2), np.log(25)))
        radii = [radius_mm * rng.uniform(0.7, 1.3) / s for s in spacing]
        centre = [int(v) for v in rng.uniform(low, high)]
        if k < lesions:
            paste(gt, lesion(radii, rng), centre)
            if rng.uniform() < 0.1:
                continue
        jitter = rng.integers(-2, 3, 3)
        scale = rng.uniform(0.8, 1.2)
        paste(pred, lesion([r * scale for r in radii], rng), [c + int(d) for c, d in zip(centre, jitter, strict=True)])
    return gt, pred


# ---------------------------------------------------------------------------------------- the contenders
def time_covlight(gt, pred, spacing, tolerance, device: str | None) -> dict:
    from covlight.metrics import dice, normalized_surface_dice

    if device is not None:
        import torch

        gt, pred = torch.from_numpy(gt).to(device), torch.from_numpy(pred).to(device)

    def timed():
        start = time.perf_counter()
        value = normalized_surface_dice(pred, gt, spacing, tolerance)
        if device is not None and device.startswith("cuda"):
            import torch

            torch.cuda.synchronize()
        return value, time.perf_counter() - start

    value, cold = timed()
    warm = min(timed()[1] for _ in range(2))
    return {"time_s": cold, "warm_best_s": warm, "nsd": value, "dsc": dice(pred, gt)}


def time_surface_distance(gt, pred, spacing, tolerances) -> dict:
    import surface_distance as sd

    start = time.perf_counter()
    distances = sd.compute_surface_distances(gt, pred, spacing)
    shared = time.perf_counter() - start
    results = {}
    for tolerance in tolerances:
        start = time.perf_counter()
        value = sd.compute_surface_dice_at_tolerance(distances, tolerance)
        results[str(tolerance)] = {"time_s": shared + time.perf_counter() - start, "nsd": float(value),
                                   "dsc": float(sd.compute_dice_coefficient(gt, pred))}
    return results


def time_monai(gt, pred, spacing, tolerances) -> dict:
    import torch
    from monai.metrics import compute_surface_dice

    def one_hot(mask):
        tensor = torch.from_numpy(mask)
        return torch.stack([~tensor, tensor])[None]

    y_pred, y = one_hot(pred), one_hot(gt)
    results = {}
    for tolerance in tolerances:
        start = time.perf_counter()
        value = compute_surface_dice(y_pred, y, [tolerance], include_background=False, spacing=list(spacing),
                                     use_subvoxels=True)
        results[str(tolerance)] = {"time_s": time.perf_counter() - start, "nsd": float(value.item())}
    return results


def worker(args) -> None:
    """One contender on one case in this process; prints its JSON."""
    import warnings

    warnings.simplefilter("ignore")
    gt, pred = np.load(args.gt), np.load(args.pred)
    spacing = tuple(float(s) for s in args.spacing.split(","))
    tolerances = [float(t) for t in args.tolerances.split(",")]
    if args.worker.startswith("covlight"):
        import covlight.metrics  # noqa: F401  (imported before the baseline is taken)
    start_mb = status_mb("VmRSS")
    if args.worker == "covlight":
        results = {str(t): time_covlight(gt, pred, spacing, t, None) for t in tolerances}
    elif args.worker == "covlight-torch":
        results = {str(t): time_covlight(gt, pred, spacing, t, args.device) for t in tolerances}
    elif args.worker == "surface-distance":
        results = time_surface_distance(gt, pred, spacing, tolerances)
    else:
        results = time_monai(gt, pred, spacing, tolerances)
    peak_mb = status_mb("VmHWM")  # not ru_maxrss: Linux carries the parent's peak into a child
    print(json.dumps({"results": results, "peak_rss_mb": peak_mb, "rss_before_mb": start_mb,
                      "peak_above_start_mb": peak_mb - start_mb}))


def run_contender(name: str, gt: Path, pred: Path, spacing, tolerances, device: str | None = None) -> dict:
    arguments = ["--worker", name, "--gt", str(gt), "--pred", str(pred), "--spacing", ",".join(map(str, spacing)),
                 "--tolerances", ",".join(map(str, tolerances))]
    return run_worker(__file__, arguments + (["--device", device] if device else []), WORKER_TIMEOUT_S)


# ------------------------------------------------------------------------------------------- the report
def benchmark_case(case: str, size: str, folder: Path, gpu: bool, log) -> dict:
    shape, spacing = SIZES[size]
    gt, pred = lung_case(shape) if case == "lung" else infection_case(shape, spacing)
    gt_path, pred_path = folder / f"{case}{size}_gt.npy", folder / f"{case}{size}_pred.npy"
    np.save(gt_path, gt)
    np.save(pred_path, pred)
    entry = {"case": case, "size": size, "shape": list(shape), "spacing_mm": list(spacing),
             "foreground_fraction": {"gt": float(gt.mean()), "pred": float(pred.mean())}}
    del gt, pred
    runs = {}
    for name in ("covlight", "covlight-torch"):
        per_tolerance = [run_contender(name, gt_path, pred_path, spacing, [t]) for t in TOLERANCES]
        runs[name] = merge_runs(per_tolerance)
        log(f"{case} {size} {name}: {summarise(runs[name])}")
    if gpu:
        per_tolerance = [run_contender("covlight-torch", gt_path, pred_path, spacing, [t], "cuda") for t in TOLERANCES]
        runs["covlight-cuda"] = merge_runs(per_tolerance)
        log(f"{case} {size} covlight-cuda: {summarise(runs['covlight-cuda'])}")
    for name in ("surface-distance", "monai"):
        runs[name] = run_contender(name, gt_path, pred_path, spacing, TOLERANCES)
        log(f"{case} {size} {name}: {summarise(runs[name])}")
    gt_path.unlink()
    pred_path.unlink()

    entry["peak_rss_mb"] = {name: run.get("peak_rss_mb") for name, run in runs.items()}
    entry["peak_above_start_mb"] = {name: run.get("peak_above_start_mb") for name, run in runs.items()}
    entry["errors"] = {name: run["error"] for name, run in runs.items() if "error" in run}
    entry["tolerances"] = {}
    for tolerance in map(str, TOLERANCES):
        row = {name: run["results"][tolerance] for name, run in runs.items() if "results" in run}
        ours, reference = row.get("covlight"), row.get("surface-distance")
        if ours and reference:
            row["speedup_vs_surface_distance"] = reference["time_s"] / ours["time_s"]
            row["nsd_abs_diff_vs_surface_distance"] = abs(ours["nsd"] - reference["nsd"])
            row["dsc_abs_diff_vs_surface_distance"] = abs(ours["dsc"] - reference["dsc"])
        if ours and row.get("monai"):
            row["speedup_vs_monai"] = row["monai"]["time_s"] / ours["time_s"]
            row["nsd_abs_diff_vs_monai"] = abs(ours["nsd"] - row["monai"]["nsd"])
        if ours and row.get("covlight-torch"):
            row["torch_equals_numpy"] = row["covlight-torch"]["nsd"] == ours["nsd"]
        entry["tolerances"][tolerance] = row
    return entry


def merge_runs(runs: list[dict]) -> dict:
    """One contender's per-tolerance processes as one run (peak: the largest)."""
    errors = [run["error"] for run in runs if "error" in run]
    if errors:
        return {"error": "; ".join(errors)}
    merged = {"results": {}, "peak_rss_mb": max(run["peak_rss_mb"] for run in runs),
              "peak_above_start_mb": max(run["peak_above_start_mb"] for run in runs)}
    for run in runs:
        merged["results"].update(run["results"])
    return merged


def summarise(run: dict) -> str:
    if "error" in run:
        return run["error"]
    times = ", ".join(f"{t} mm {r['time_s']:.3f} s" for t, r in run["results"].items())
    return f"{times}; peak {run['peak_rss_mb']:.0f} MB"


def bars(entries: list[dict]) -> dict:
    """Whether each size meets the issue's bars (speed on both cases and tolerances; memory at 512)."""
    verdict = {}
    for size in sorted({entry["size"] for entry in entries}):
        rows = [row for entry in entries if entry["size"] == size for row in entry["tolerances"].values()]
        speedups = [row.get("speedup_vs_surface_distance", 0.0) for row in rows]
        differences = [row.get("nsd_abs_diff_vs_surface_distance", float("inf")) for row in rows]
        verdict[size] = {"required_speedup": REQUIRED_SPEEDUP[size], "min_speedup": min(speedups),
                         "speed_met": min(speedups) >= REQUIRED_SPEEDUP[size],
                         "max_nsd_abs_diff": max(differences), "values_identical": max(differences) <= 1e-12}
        if size in MEMORY_BAR_MB:
            peak = max(entry["peak_rss_mb"]["covlight"] for entry in entries if entry["size"] == size)
            verdict[size].update({"memory_bar_mb": MEMORY_BAR_MB[size], "covlight_peak_rss_mb": peak,
                                  "memory_met": peak < MEMORY_BAR_MB[size]})
    return verdict


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", help="also write the JSON here")
    parser.add_argument("--quick", action="store_true", help="the 256 size only")
    parser.add_argument("--worker", choices=CONTENDERS, help=argparse.SUPPRESS)
    parser.add_argument("--gt", help=argparse.SUPPRESS)
    parser.add_argument("--pred", help=argparse.SUPPRESS)
    parser.add_argument("--spacing", help=argparse.SUPPRESS)
    parser.add_argument("--tolerances", help=argparse.SUPPRESS)
    parser.add_argument("--device", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return

    import monai
    import scipy
    import torch

    report = {"machine": machine_info(scipy=scipy.__version__, monai=monai.__version__),
              "method": __doc__.split("\n\n", 1)[1].strip(), "cases": []}
    gpu = torch.cuda.is_available()
    with tempfile.TemporaryDirectory(prefix="covlight-bench-") as folder:
        for size in ("256",) if args.quick else ("256", "512"):
            for case in ("lung", "infection"):
                report["cases"].append(benchmark_case(case, size, Path(folder), gpu, log))
    report["bars"] = bars(report["cases"])
    emit(report, args.out)


if __name__ == "__main__":
    main()

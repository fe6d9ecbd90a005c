"""Time and peak memory per case of the methods without a network at 512x512x300, and whether a coarser working
grid (`method.work_spacing_mm`) keeps the result.

A demo phantom is resampled to 512x512x300 (spacing 0.68 x 0.68 x 0.87 mm, a full chest CT) and to 256x256x150.
Each row runs in its own process (its peak memory is its own), capped at --memory-gb of address space so that a
method too large for the machine stops with a MemoryError instead of taking the machine's memory from others.
Seeds: 3 full slices from the truth (data.interaction.slices=3); lung DSC without the seed slices. Each method runs
as conf/method/<name>.yaml configures it, with work_spacing_mm as the row says (null: the scan's own grid).

On 256x256x150 each seeded method runs on its own grid and at work_spacing_mm=2.7 (2x2x2 blocks): the DSC it loses.
On 512x512x300 at 2.7 mm (4x4x3 blocks) and on its own grid. Resumable like semiauto_real.py: each row is written
to --out when measured, a rerun measures only the missing rows; `"complete": true` when every row exists (a row
that ran out of memory or time exists, with its error).

    nice -n 5 python benchmarks/semiauto_size.py --out benchmarks/results/semiauto_size.json
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import log, machine_info, run_worker, status_mb  # noqa: E402
from covlight.atomic import write_json  # noqa: E402

WORK_SPACING_MM = 2.7
SHAPES = {"512x512x300": (512, 512, 300), "256x256x150": (256, 256, 150)}
# (shape, method, work_spacing_mm)
ROWS = [(shape, method, spacing) for shape in ("256x256x150", "512x512x300")
        for method in ("random_walker", "graph_cut", "active_contour") for spacing in (WORK_SPACING_MM, None)]
ROWS.insert(0, ("512x512x300", "classic_lung", None))


def phantom(shape: tuple[int, int, int]):
    """A demo phantom (128x128x42, 2.72 x 2.72 x 6.19 mm) resampled to `shape`: stored image 0..255, truth, affine."""
    from scipy import ndimage

    from covlight.data.canonical import affine_from_spacing, hu_to_0_255
    from covlight.data.synthetic import make_phantom

    case = make_phantom("coronacases_001", seed=0, size="demo")
    factors = [n / m for n, m in zip(shape, case.image_hu.shape, strict=True)]
    image = ndimage.zoom(hu_to_0_255(case.image_hu).astype(np.float32), factors, order=1)
    truth = ndimage.zoom(case.label, factors, order=0)
    spacing = [s / f for s, f in zip(case.spacing, factors, strict=True)]
    return image, truth, affine_from_spacing(spacing)


def worker(shape_name: str, method: str, work_spacing: str, memory_gb: float) -> dict:
    from benchmarks.semiauto_real import make_method, settings
    from covlight.data.canonical import HU_WINDOW
    from covlight.data.interaction import UNSEEDED, Seeds, seed_slices
    from covlight.methods.semiauto import classic_lung_labels, spacing_of
    from covlight.metrics import score_case

    stored, truth, affine = phantom(SHAPES[shape_name])
    lungs = np.where(np.isin(truth, (1, 2)), truth, 0).astype(np.int16)
    del truth
    limit = int(status_mb("VmSize") * 2**20 + memory_gb * 2**30)  # the cap: what the method may add
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    slices: tuple[int, ...] = ()
    before = status_mb("VmHWM")
    start = time.perf_counter()
    try:
        if method == "classic_lung":
            knobs = settings(method)
            hu = HU_WINDOW[0] + stored * (HU_WINDOW[1] - HU_WINDOW[0]) / 255.0
            classes = classic_lung_labels(hu, affine, knobs["threshold_hu"], knobs["second_lung_share"])
        else:
            slices = seed_slices(np.flatnonzero(lungs.any(axis=(0, 1))), 3, np.random.default_rng(0))
            markers = np.full(lungs.shape, UNSEEDED, np.int16)
            for z in slices:
                markers[:, :, z] = lungs[:, :, z]
            module = make_method(method, "lung")
            module.work_spacing_mm = None if work_spacing == "None" else float(work_spacing)
            classes = module.segment(stored, affine, {"seeds": Seeds(markers, slices, "slices", 0)})
    except MemoryError:
        return {"error": f"MemoryError: more than the {memory_gb:g} GB cap", "seconds": round(
            time.perf_counter() - start, 1), "peak_rss_mb": round(status_mb("VmHWM"), 0)}
    seconds = time.perf_counter() - start
    kept = [z for z in range(lungs.shape[2]) if z not in slices]
    scores = score_case(classes[:, :, kept].astype(np.uint8), lungs[:, :, kept].astype(np.uint8), spacing_of(affine),
                        ["left_lung", "right_lung"], metrics=("dsc",))
    return {"seconds": round(seconds, 1), "peak_rss_mb": round(status_mb("VmHWM"), 0),
            "peak_rss_before_mb": round(before, 0), "seed_slices": list(slices),
            "spacing_mm": [round(s, 3) for s in spacing_of(affine)], **{k: round(v, 4) for k, v in scores.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="JSON file of the results (kept and continued if it exists)")
    parser.add_argument("--memory-gb", type=float, default=10.0, help="address space a method may add (GB)")
    parser.add_argument("--timeout-s", type=float, default=1800.0, help="time a row may take")
    parser.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(*args.worker, args.memory_gb)))
        return
    if not args.out:
        parser.error("--out is required")
    import skimage

    out = Path(args.out)
    report = {"benchmark": "semiauto_size", "complete": False, "memory_cap_gb": args.memory_gb,
              "timeout_s": args.timeout_s, "results": []}
    if out.exists():
        report = json.loads(out.read_text(encoding="utf-8"))
    report.setdefault("machines", []).append(machine_info(scikit_image=skimage.__version__))

    def key(row):
        return row["shape"], row["method"], row["work_spacing_mm"]

    done = {key(row) for row in report["results"]}
    for shape, method, spacing in ROWS:
        if (shape, method, spacing) in done:
            continue
        log(f"{shape} {method} work_spacing_mm={spacing} ...")
        result = run_worker(__file__, ["--worker", shape, method, str(spacing), "--memory-gb", str(args.memory_gb)],
                            timeout_s=args.timeout_s)
        report["results"].append({"shape": shape, "method": method, "work_spacing_mm": spacing, **result,
                                  "run": len(report["machines"])})
        report["complete"] = {key(r) for r in report["results"]} >= set(ROWS)
        write_json(out, report)
        log(json.dumps(report["results"][-1]))
    log(f"{out}: {len(report['results'])} of {len(ROWS)} rows; complete: {report['complete']}")


if __name__ == "__main__":
    main()

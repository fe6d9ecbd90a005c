"""Time and peak memory of the random walker per case at 512x512x300 (a demo phantom resampled to that size).

Each variant runs in its own process (peak memory is its own): `crop` is what method=random_walker does (the seeds'
in-plane box plus 20 mm, all slices); `half` runs the same crop on the phantom at half the in-plane resolution
(256x256x300), to see what a coarser spacing would save; `whole` (only with --whole: tens of GB) the whole volume.
Seeds: 3 full slices from the truth, as data.interaction.slices=3. Lung DSC without the seed slices.

    python benchmarks/semiauto_size.py --out benchmarks/results/semiauto_size.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import emit, log, machine_info, run_worker, status_mb  # noqa: E402

SHAPE = (512, 512, 300)


def phantom(in_plane: int):
    """A demo phantom (128x128, 28-44 slices) resampled to (in_plane, in_plane, 300): image, truth, affine."""
    from scipy import ndimage

    from covlight.data.canonical import affine_from_spacing, hu_to_0_255
    from covlight.data.synthetic import make_phantom

    case = make_phantom("coronacases_001", seed=0, size="demo")
    factors = [in_plane / case.image_hu.shape[0], in_plane / case.image_hu.shape[1], SHAPE[2] / case.image_hu.shape[2]]
    image = ndimage.zoom(hu_to_0_255(case.image_hu), factors, order=1) / 255.0
    truth = ndimage.zoom(case.label, factors, order=0)
    spacing = [s / f for s, f in zip(case.spacing, factors, strict=True)]
    return image.astype(np.float32), truth, affine_from_spacing(spacing)


def worker(variant: str) -> dict:
    from covlight.data.interaction import UNSEEDED, seed_slices
    from covlight.methods.semiauto import random_walker_classes
    from covlight.metrics import score_case

    image, truth, affine = phantom(SHAPE[0] // 2 if variant == "half" else SHAPE[0])
    lungs = np.where(np.isin(truth, (1, 2)), truth, 0).astype(np.int16)
    slices = seed_slices(np.flatnonzero(lungs.any(axis=(0, 1))), 3, np.random.default_rng(0))
    markers = np.full(truth.shape, UNSEEDED, np.int16)
    for z in slices:
        markers[:, :, z] = lungs[:, :, z]
    before = status_mb("VmHWM")
    start = time.perf_counter()
    classes = random_walker_classes(image, markers, affine, margin_mm=None if variant == "whole" else 20.0)
    seconds = time.perf_counter() - start
    kept = [z for z in range(truth.shape[2]) if z not in slices]
    spacing = tuple(float(s) for s in np.diag(affine)[:3])
    scores = score_case(classes[:, :, kept].astype(np.uint8), truth[:, :, kept], spacing, ["left_lung", "right_lung"],
                        metrics=("dsc",))
    return {"variant": variant, "shape": list(image.shape), "seconds": round(seconds, 1),
            "peak_rss_mb": round(status_mb("VmHWM"), 0), "peak_rss_before_mb": round(before, 0),
            "seed_slices": list(slices), **{k: round(v, 4) for k, v in scores.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="JSON file for the results")
    parser.add_argument("--whole", action="store_true", help="also the whole 512x512x300 volume (tens of GB)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker)))
        return
    import skimage

    results = []
    for variant in ("crop", "half", *(("whole",) if args.whole else ())):
        log(f"random walker, {variant} ...")
        results.append(run_worker(__file__, ["--worker", variant], timeout_s=3600))
        log(json.dumps(results[-1]))
    emit({"benchmark": "semiauto_size", "machine": machine_info(scikit_image=skimage.__version__),
          "results": results}, args.out)


if __name__ == "__main__":
    main()

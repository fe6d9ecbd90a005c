"""Time `covlight.postprocess.largest_component` on a CT-sized label map (512 x 512 x 300, two lungs with stray
islands and a multi-focal infection), beside nnU-Net v1's own function when it is installed. JSON to --out.

    python benchmarks/postprocess_speed.py --out benchmarks/results/postprocess_speed.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_info  # noqa: E402

from covlight.postprocess import largest_component  # noqa: E402


def label_map(shape, seed=0) -> np.ndarray:
    """Left and right lung ellipsoids (1, 2), 200 islands of each lung, 60 lesions (3)."""
    rng = np.random.default_rng(seed)
    x, y, z = np.ogrid[:shape[0], :shape[1], :shape[2]]
    labels = np.zeros(shape, np.uint8)
    for value, centre in ((1, 0.3), (2, 0.7)):
        inside = (((x - centre * shape[0]) / (0.17 * shape[0])) ** 2 + ((y - shape[1] / 2) / (0.3 * shape[1])) ** 2
                  + ((z - shape[2] / 2) / (0.45 * shape[2])) ** 2) <= 1
        labels[inside] = value
    for value, count, radius in ((1, 200, 2), (2, 200, 2), (3, 60, 6)):
        for cx, cy, cz in zip(*(rng.integers(8, n - 8, count) for n in shape), strict=True):
            labels[cx - radius:cx + radius, cy - radius:cy + radius, cz - radius:cz + radius] = value
    return labels


def timed(function, labels, rounds) -> list[float]:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        function(labels)
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--shape", type=int, nargs=3, default=[512, 512, 300])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    labels = label_map(tuple(args.shape))
    components = {int(v): int(ndimage.label(labels == v)[1]) for v in (1, 2, 3)}
    contenders = {"covlight largest_component (scipy.ndimage.label, bincount)":
                  lambda a: largest_component(a, [1, 2, 3]),
                  "covlight largest_component, lungs only": lambda a: largest_component(a, [1, 2])}
    try:
        from nnunet.postprocessing.connected_components import remove_all_but_the_largest_connected_component

        contenders["nnU-Net v1 remove_all_but_the_largest_connected_component"] = \
            lambda a: remove_all_but_the_largest_connected_component(a.copy(), [1, 2, 3], 1.0)
        assert np.array_equal(largest_component(labels, [1, 2, 3]),
                              remove_all_but_the_largest_connected_component(labels.copy(), [1, 2, 3], 1.0)[0])
    except ImportError:
        pass
    results = {}
    for name, function in contenders.items():
        times = timed(function, labels, args.rounds)
        results[name] = {"median_s": round(statistics.median(times), 3), "times_s": [round(t, 3) for t in times]}
        print(f"{name}: {results[name]['median_s']} s", file=sys.stderr)
    payload = {"machine": machine_info(), "shape": args.shape, "components": components, "rounds": args.rounds,
               "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()

"""Time the resampling rules of `data.preprocessing.resampling` on a chest-CT-sized scan (512 x 512 x 300 at
0.68 x 0.68 x 1.0 mm to nnU-Net's 3d_fullres spacing 0.78 x 0.78 x 2.5 mm, the benchmark's v1 plans), beside nnU-Net
v1's own `resample_patient` when it is installed. JSON to --out.

    python benchmarks/resampling_speed.py --out benchmarks/results/resampling_speed.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torchio as tio

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_info  # noqa: E402

from covlight.data.resampling import probabilities_on_grid, resample_step, v1_separate_axis, v1_shape  # noqa: E402


def timed(function, rounds) -> list[float]:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--shape", type=int, nargs=3, default=[512, 512, 300])
    parser.add_argument("--spacing", type=float, nargs=3, default=[0.68, 0.68, 1.0])
    parser.add_argument("--target", type=float, nargs=3, default=[0.78125, 0.78125, 2.5])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    image = rng.uniform(0, 255, size=args.shape).astype(np.float32)
    affine = np.diag([*args.spacing, 1.0])
    subject = tio.Subject(image=tio.ScalarImage(tensor=torch.from_numpy(image)[None], affine=affine))
    working = v1_shape(args.shape, args.spacing, args.target)
    axis = v1_separate_axis(args.spacing, args.target)
    probabilities = torch.softmax(torch.randn(4, *working), 0)
    contenders = {
        "image to target, linear (TorchIO Resample)": lambda: resample_step("linear", args.target)(subject),
        "image to target, nnunet_v1 (covlight)": lambda: resample_step("nnunet_v1", args.target)(subject),
        "4-class probabilities back, linear (torch)": lambda: probabilities_on_grid(probabilities, args.shape),
        "4-class probabilities back, nnunet_v1 (torch)": lambda: probabilities_on_grid(probabilities, args.shape,
                                                                                       axis),
    }
    try:
        from nnunet.preprocessing.preprocessing import resample_data_or_seg, resample_patient

        v1_spacing, v1_target = np.array(args.spacing[::-1]), np.array(args.target[::-1])  # v1's z, y, x
        v1_image = np.ascontiguousarray(image.transpose(2, 1, 0))[None]
        v1_probabilities = probabilities.numpy().transpose(0, 3, 2, 1)
        v1_axis = None if axis is None else [2 - axis]
        contenders["image to target, nnU-Net v1 resample_patient"] = lambda: resample_patient(
            v1_image, None, v1_spacing, v1_target, 3, 1, force_separate_z=None, order_z_data=0)
        contenders["4-class probabilities back, nnU-Net v1 resample_data_or_seg"] = lambda: resample_data_or_seg(
            v1_probabilities, np.array(args.shape[::-1]), False, v1_axis, 1, axis is not None, order_z=0)
    except ImportError:
        pass
    results = {}
    for name, function in contenders.items():
        times = timed(function, args.rounds)
        results[name] = {"median_s": round(statistics.median(times), 3), "times_s": [round(t, 3) for t in times]}
        print(f"{name}: {results[name]['median_s']} s", file=sys.stderr)
    payload = {"machine": machine_info(), "shape": args.shape, "spacing_mm": args.spacing,
               "target_spacing_mm": args.target, "working_shape": list(working), "order_0_axis": axis,
               "threads": torch.get_num_threads(), "rounds": args.rounds, "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()

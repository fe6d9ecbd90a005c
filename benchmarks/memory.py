"""Bounded memory at test time: peak RSS of whole-case prediction and scoring of a 512x512x400 CT (issue 8).

    python benchmarks/memory.py [--out FILE] [--shape X,Y,Z] [--overlap F]

A synthetic chest CT (body, two lungs, a few lesions, noise; spacing 0.7 x 0.7 x 1.0 mm) is built in the canonical
0..255 range as float32 (420 MB at 512x512x400), scaled to 0..1 as the data module does, and predicted by a U-Net
of the demo's size with random weights, on the CPU, as `SupervisedSegmentation.test_step` does it:
- unet2d: the demo's 2D net (features 16-256, strides 1,2,2,2,2), slice by slice (patch 512x512x1, 16 slices a
  batch, `net_spatial_dims=2`);
- unet3d: a 3D net (features 16-128, strides 1,2,2,2), Gaussian sliding window with patch 256x256x128, batch 1,
  overlap 0.5 (nnU-Net's step), no mirroring.
The probabilities are argmaxed and mapped to canonical labels, then DSC and NSD of the three structures are scored
(`covlight.metrics.score_case`, torch on the CPU) against the phantom's truth. A net with random weights predicts
salt and pepper, so nearly every predicted voxel is a surface point: the worst case for NSD's time and memory. The prediction is at the image's
own spacing (no resampling back to another grid). Each contender runs in its own process, which reports its
peak RSS (VmHWM) and that reached by the end of each phase. The bar: peak RSS under 8 GiB. Time is not the point
(the sliding window of the 3D net over the whole volume takes tens of minutes on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from common import emit, log, machine_info, run_worker, status_mb

SPACING = (0.7, 0.7, 1.0)
NOISE = 3.0  # standard deviation in 0..255 units (about 18 HU)
BAR_GIB = 8.0
TISSUE_HU = {"air": -1000, "lung": -850, "lesion": -300, "tissue": 40}
CONTENDERS = {
    "unet2d": {
        "net": {"spatial_dims": 2, "features_per_stage": [16, 32, 64, 128, 256], "strides": [1, 2, 2, 2, 2]},
        "patch_size": [512, 512, 1], "batch_size": 16, "net_spatial_dims": 2,
    },
    "unet3d": {
        "net": {"spatial_dims": 3, "features_per_stage": [16, 32, 64, 128],
                "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2]]},
        "patch_size": [256, 256, 128], "batch_size": 1, "net_spatial_dims": 3,
    },
}
WORKER_TIMEOUT_S = 4 * 3600


def stored(tissue: str) -> float:
    """The canonical 0..255 value of a tissue (HU windowed to [-1250, 250] and scaled)."""
    return (TISSUE_HU[tissue] + 1250) * 255 / 1500


def synthetic_ct(shape, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(image float32 0..255, label uint8 canonical), built slice by slice so no temporary is volume-sized."""
    rng = np.random.default_rng(seed)
    nx, ny, nz = shape
    x = ((np.arange(nx, dtype=np.float32) + 0.5) / nx)[:, None]
    y = ((np.arange(ny, dtype=np.float32) + 0.5) / ny)[None, :]
    body = ((x - 0.5) / 0.45) ** 2 + ((y - 0.5) / 0.32) ** 2 <= 1
    # (centre x, y, z, radius x, y, z) in fractions of the volume: left lung (smaller x, RAS+), right lung, lesions
    lungs = [(1, (0.32, 0.5, 0.5, 0.13, 0.2, 0.42)), (2, (0.68, 0.5, 0.5, 0.14, 0.2, 0.42))]
    lesions = [(3, (cx, cy, cz, r, r, r * nx / nz)) for cx, cy, cz, r in rng.uniform(
        [0.25, 0.4, 0.2, 0.01], [0.75, 0.6, 0.8, 0.04], size=(12, 4)) if abs(cx - 0.5) > 0.1]
    image = np.empty(shape, np.float32)
    label = np.zeros(shape, np.uint8)
    for k in range(nz):
        z = (k + 0.5) / nz
        plane = np.where(body, stored("tissue"), stored("air")).astype(np.float32)
        for value, (cx, cy, cz, rx, ry, rz) in lungs + lesions:
            inside = ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 <= 1 - ((z - cz) / rz) ** 2
            if value == 3:
                inside &= label[:, :, k] > 0  # lesions only inside the lungs
            label[:, :, k][inside] = value
            plane[inside] = stored("lesion" if value == 3 else "lung")
        plane += rng.standard_normal(plane.shape, dtype=np.float32) * NOISE
        image[:, :, k] = np.clip(plane, 0, 255)
    return image, label


def worker(name: str, shape, overlap: float) -> dict:
    """One contender in this process: build, predict, argmax, score; the peak RSS at the end of each phase."""
    import torch

    from covlight.inference import sliding_window_predict, sliding_window_steps
    from covlight.metrics import score_case
    from covlight.nets import UNet

    torch.manual_seed(0)
    setting = CONTENDERS[name]
    net = UNet(in_channels=1, num_classes=4, **setting["net"]).eval()
    class_to_label = torch.tensor([0, 1, 2, 3], dtype=torch.uint8)
    phases, peaks = {}, {"start": status_mb("VmHWM")}
    rss_start = status_mb("VmRSS")

    start = time.perf_counter()
    ct, truth = synthetic_ct(shape)
    image = torch.from_numpy(ct)[None]
    image /= 255.0  # ScaleIntensity, in place
    phases["build_s"], peaks["build"] = time.perf_counter() - start, status_mb("VmHWM")

    start = time.perf_counter()
    patch_size = [min(p, n) for p, n in zip(setting["patch_size"], shape, strict=True)]  # smaller --shape
    probabilities = sliding_window_predict(net, image, patch_size=patch_size, overlap=overlap,
                                           mirror_axes=(), batch_size=setting["batch_size"],
                                           net_spatial_dims=setting["net_spatial_dims"])
    phases["predict_s"], peaks["predict"] = time.perf_counter() - start, status_mb("VmHWM")

    start = time.perf_counter()
    prediction = class_to_label[probabilities.argmax(0)]  # as SupervisedSegmentation.labels_on_grid
    del probabilities
    phases["argmax_s"], peaks["argmax"] = time.perf_counter() - start, status_mb("VmHWM")

    start = time.perf_counter()
    scores = score_case(prediction, torch.from_numpy(truth), SPACING)
    phases["score_s"], peaks["score"] = time.perf_counter() - start, status_mb("VmHWM")

    windows = int(np.prod([len(s) for s in sliding_window_steps(shape, patch_size, overlap)]))
    return {"setting": {**setting, "patch_size": patch_size, "overlap": overlap, "mirroring": False, "windows": windows,
                        "torch_threads": torch.get_num_threads()},
            "prediction_fractions": {str(v): float((prediction == v).float().mean()) for v in range(4)},
            "scores": scores, "phases": phases, "peak_rss_mib_by_end_of": peaks, "rss_after_imports_mib": rss_start,
            "peak_rss_mib": peaks["score"], "peak_rss_gib": peaks["score"] / 1024}


def run_contender(name: str, shape, overlap: float) -> dict:
    start = time.perf_counter()
    result = run_worker(__file__, ["--worker", name, "--shape", ",".join(map(str, shape)), "--overlap", str(overlap)],
                        WORKER_TIMEOUT_S)
    if "error" in result:
        return result
    result["wall_s"] = time.perf_counter() - start
    log(f"{name}: peak RSS {result['peak_rss_gib']:.2f} GiB, {result['wall_s']:.0f} s: {json.dumps(result)}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", help="also write the JSON here")
    parser.add_argument("--shape", default="512,512,400", help="volume size X,Y,Z (default 512,512,400)")
    parser.add_argument("--overlap", type=float, default=0.5, help="sliding-window overlap (default 0.5)")
    parser.add_argument("--worker", choices=sorted(CONTENDERS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    shape = tuple(int(n) for n in args.shape.split(","))
    if args.worker:
        print(json.dumps(worker(args.worker, shape, args.overlap)))
        return

    report = {"machine": machine_info(), "method": __doc__.split("\n\n", 1)[1].strip(),
              "shape": list(shape), "spacing_mm": list(SPACING), "image_mib": float(np.prod(shape)) * 4 / 2**20}
    report["contenders"] = {name: run_contender(name, shape, args.overlap) for name in CONTENDERS}
    peaks = {name: run.get("peak_rss_gib") for name, run in report["contenders"].items()}
    report["bar"] = {"peak_rss_below_gib": BAR_GIB, "peak_rss_gib": peaks,
                     "met": all(peak is not None and peak < BAR_GIB for peak in peaks.values())}
    emit(report, args.out)


if __name__ == "__main__":
    main()

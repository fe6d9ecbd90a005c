"""Whole-volume inference: covlight's sliding window against MONAI's `sliding_window_inference`, issue 7.

    python benchmarks/sliding_window.py [--out FILE] [--rounds N]

One synthetic CT volume (`memory.synthetic_ct`: body, two lungs, lesions, noise; 0..1 as the data module scales
it) of 128x128x48 voxels, and one 3D U-Net (features 8-64, strides 1,2,2,2, 4 classes) whose weights are fitted
for 150 steps on 32x32x16 patches of that volume (so its outputs mean something and the argmax is not a coin toss
between near-equal random logits), in eval mode. Its classes are ones a patch can tell apart (0 air, 1 body, 2 lung,
3 lesion; class-weighted cross-entropy), so every class appears in the predictions and the agreement covers all. Both contenders predict the whole volume with patch 64x64x32, overlap 0.5,
Gaussian weighting (sigma = 0.125 x patch), 2 windows per batch, and return softmax probabilities:
- covlight: `covlight.inference.sliding_window_predict`;
- MONAI: `monai.inferers.sliding_window_inference(mode="gaussian", sigma_scale=0.125, overlap=0.5)`, then softmax.
With mirroring (axes 1 and 2: 4 flip combinations; covlight never mirrors lung models across left-right, axis 0),
covlight averages the logits of the flips (`mirror_axes`); MONAI has no mirroring, so its predictor is wrapped to
average the flipped logits as nnU-Net does. Each contender runs in
its own process (threads: torch's default), rounds alternate covlight, MONAI, ...; the time is the median over
rounds. Agreement: Dice of the two argmax maps per foreground class, averaged. MONAI's own Gaussian differs from
nnU-Net's, which covlight follows: MONAI raises every weight to at least 1e-3 of the maximum (nnU-Net raises only
zeros), and centres the map at patch // 2 with erf-integrated voxels, so where neighbouring windows disagree (a
network is worst near a window's border) the mix differs. Agreement is therefore given twice: against MONAI as it
comes, and against MONAI handed covlight's importance map (`roi_weight_map`: the same Gaussian weighting, one run),
on which the agreement bar is judged. Bars: covlight / MONAI time <= 1.0, agreement >= 0.99, with and without
mirroring.
"""

from __future__ import annotations

import argparse
import itertools
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from common import emit, log, machine_info, median, run_worker, status_mb

SHAPE = (128, 128, 48)
PATCH = (64, 64, 32)
SPACING = (1.6, 1.6, 3.0)
MIRROR_AXES = (1, 2)
NET = {"spatial_dims": 3, "in_channels": 1, "num_classes": 4, "features_per_stage": [8, 16, 32, 64],
       "strides": [1, 2, 2, 2]}
BARS = {"time_ratio": 1.0, "dice": 0.99}


def prepare(folder: Path) -> None:
    """The volume and a briefly fitted network, saved for the workers."""
    import torch
    import torch.nn.functional as F
    from memory import synthetic_ct

    from covlight.nets import UNet

    image, label = synthetic_ct(SHAPE)
    image = image / 255.0
    torch.manual_seed(0)
    net = UNet(**NET)
    optimizer = torch.optim.Adam(net.parameters(), 1e-2)
    target = np.where(label == 3, 3, np.where(label > 0, 2, np.where(image > 0.3, 1, 0)))  # air, body, lung, lesion
    x, y = torch.from_numpy(image)[None, None], torch.from_numpy(target.astype(np.int64))[None]
    class_weights = torch.tensor([1.0, 1.0, 3.0, 10.0])
    train_patch = (32, 32, 16)
    for _ in range(150):
        starts = [int(torch.randint(0, n - p + 1, ())) for n, p in zip(SHAPE, train_patch, strict=True)]
        window = tuple(slice(s, s + p) for s, p in zip(starts, train_patch, strict=True))
        loss = F.cross_entropy(net(x[(slice(None), slice(None), *window)]), y[(slice(None), *window)],
                               weight=class_weights)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    np.save(folder / "image.npy", image.astype(np.float32))
    torch.save(net.state_dict(), folder / "net.pt")


def worker(contender: str, folder: Path, mirror: bool) -> dict:
    """covlight, monai, or monai-samemap (MONAI with covlight's Gaussian importance map)."""
    import torch

    from covlight.nets import UNet

    net = UNet(**NET)
    net.load_state_dict(torch.load(folder / "net.pt", weights_only=True))
    net.eval()
    image = torch.from_numpy(np.load(folder / "image.npy"))[None]
    rss = status_mb("VmRSS")
    start = time.perf_counter()
    if contender == "covlight":
        from covlight.inference import sliding_window_predict

        probabilities = sliding_window_predict(net, image, PATCH, overlap=0.5, batch_size=2,
                                               mirror_axes=MIRROR_AXES if mirror else ())
    else:
        from monai.inferers import sliding_window_inference

        flips = [tuple(a + 2 for a in c) for r in range(len(MIRROR_AXES) + 1)
                 for c in itertools.combinations(MIRROR_AXES, r)] if mirror else [()]

        def predictor(batch):
            return sum(net(batch.flip(f)).flip(f) if f else net(batch) for f in flips) / len(flips)

        weights = None
        if contender == "monai-samemap":
            from covlight.inference.sliding_window import gaussian_importance_map

            weights = gaussian_importance_map(PATCH, 0.125)
        with torch.no_grad():
            logits = sliding_window_inference(image[None], PATCH, 2, predictor, overlap=0.5, mode="gaussian",
                                              sigma_scale=0.125, roi_weight_map=weights)
        probabilities = torch.as_tensor(logits)[0].softmax(0)
    elapsed = time.perf_counter() - start
    np.save(folder / f"{contender}-{int(mirror)}.npy", probabilities.argmax(0).to(torch.uint8).numpy())
    return {"time_s": elapsed, "peak_rss_mb": status_mb("VmHWM"), "rss_before_mb": rss,
            "threads": torch.get_num_threads()}


def agreement(a: np.ndarray, b: np.ndarray) -> dict:
    per_class = {}
    for c in range(1, NET["num_classes"]):
        x, y = a == c, b == c
        total = int(x.sum() + y.sum())
        per_class[str(c)] = float(2 * (x & y).sum() / total) if total else float("nan")
    values = [v for v in per_class.values() if v == v]
    return {"per_class": per_class, "mean": float(np.mean(values)), "voxels_equal": float((a == b).mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", help="also write the JSON here")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--worker", choices=("covlight", "monai", "monai-samemap"), help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    parser.add_argument("--mirror", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, Path(args.folder), args.mirror)))
        return

    import monai

    report = {"machine": machine_info(monai=monai.__version__), "method": __doc__.split("\n\n", 1)[1].strip(),
              "shape": SHAPE, "patch": PATCH, "net": NET, "bars": BARS, "settings": {}}
    with tempfile.TemporaryDirectory(prefix="covlight-bench-") as name:
        folder = Path(name)
        prepare(folder)
        for mirror in (False, True):
            runs = {"covlight": [], "monai": []}
            for _ in range(args.rounds):
                for contender in runs:
                    worker_args = ["--worker", contender, "--folder", str(folder)] + (["--mirror"] if mirror else [])
                    run = run_worker(__file__, worker_args)
                    runs[contender].append(run)
                    log(f"mirror={mirror} {contender}: " + (run.get("error") or f"{run['time_s']:.2f} s"))
            same_map = run_worker(__file__, ["--worker", "monai-samemap", "--folder", str(folder)]
                                  + (["--mirror"] if mirror else []))
            entry = {"mirror_axes": MIRROR_AXES if mirror else [], "runs": runs, "monai_same_map_run": same_map}
            errors = [r["error"] for rs in [*runs.values(), [same_map]] for r in rs if "error" in r]
            if errors:
                entry["errors"] = errors
            else:
                times = {c: median(r["time_s"] for r in rs) for c, rs in runs.items()}
                suffix = f"-{int(mirror)}.npy"
                ours = np.load(folder / f"covlight{suffix}")
                dice = agreement(ours, np.load(folder / f"monai-samemap{suffix}"))
                ratio = times["covlight"] / times["monai"]
                entry.update(median_time_s=times, time_ratio_covlight_over_monai=ratio, argmax_dice_same_weights=dice,
                             argmax_dice_monai_own_gaussian=agreement(ours, np.load(folder / f"monai{suffix}")),
                             bar_met={"time": ratio <= BARS["time_ratio"], "dice": dice["mean"] >= BARS["dice"]})
            report["settings"]["mirror" if mirror else "plain"] = entry
    emit(report, args.out)


if __name__ == "__main__":
    main()

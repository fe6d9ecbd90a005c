"""Data pipeline: 3D training patches per second per CPU core through covlight's real loader, issue 7.

    python benchmarks/data_pipeline.py [--out FILE] [--batches N] [--rounds N]

covlight's config as composed for `model=unet3d` (patch 128x128x64, batch 2) with the default data config: the
default augmentation preset (affine, simulated low resolution, blur, noise, gamma), foreground oversampling 1/3,
16 patches per volume, a buffer of 96 patches per worker; `data.sampling.num_workers` = the CPU cores this process may use.
The volumes are the 4 training cases of task 1 fold 0 as phantoms ("demo" size) resampled, by the data module
itself, to 0.8 x 0.8 x 2.5 mm (`data.preprocessing.target_spacing`), which makes them about 420-510 x 420-510 x 55-140 voxels,
the size of a chest CT at that spacing: loading, resampling and foreground search per volume cost what they would
on real scans. The loader is the one `SegmentationDataModule.train_dataloader()` returns (PatchStream: each worker
loads a case, draws patches, augments each patch); the main process only takes batches. Each round runs in its own
process and iterates the loader for two epochs, telling the data module each epoch's number first, as training
does. Figures: the time to the first batch of epochs 1 and 2 (a worker started afresh fills its buffer first: 6
volumes; workers kept between epochs, as covlight keeps them, start filling the next epoch's buffer once told the
epoch), the steady rate from the first batch to the last of epoch 1 (the rate a training loop sees once an epoch
runs), and epoch 1's rate including the start, in patches/s and patches/s per core; the median over rounds. The bar: steady rate >= 1.25
patches/s per core (a GPU step of the default 3D model takes about 20 patches/s; the GPU machines have ~16 cores).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import warnings
from pathlib import Path

from common import emit, log, machine_info, median, run_worker

BAR_PER_CORE = 1.25
TARGET_SPACING = [0.8, 0.8, 2.5]
PHANTOM_CASES = ["coronacases_008", "coronacases_007", "radiopaedia_36_86526_0", "radiopaedia_4_85506_1"]


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def worker(data: Path, batches: int, workers: int, extra: list[str]) -> dict:
    warnings.simplefilter("ignore")
    import torch
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from covlight.config import conf_dir

    overrides = ["task=task1", "subtask=lung_infection", "fold=0", "model=unet3d", "data.cases.missing=skip",
                 f"data.preprocessing.target_spacing=[{','.join(map(str, TARGET_SPACING))}]", f"data.sampling.num_workers={workers}",
                 f"data.sampling.batches_per_epoch={batches}", f"paths.data_dir={data}", "paths.output_dir=unused", *extra]
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    torch.manual_seed(0)
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    loader = datamodule.train_dataloader()
    epochs = []
    for epoch in range(2):  # as a training loop: the epoch told to the streams, then the loader iterated
        datamodule.set_epoch(epoch)
        start = time.perf_counter()
        arrivals, patches, shape = [], 0, None
        for batch in loader:
            arrivals.append(time.perf_counter() - start)
            patches += batch["image"].shape[0]
            shape = list(batch["image"].shape)
        epochs.append((arrivals, patches, shape))
    arrivals, patches, shape = epochs[0]
    first = arrivals[0]
    steady = (patches - shape[0]) / (arrivals[-1] - first)
    return {"batch_shape": shape, "patches": patches, "workers": workers, "first_batch_s": first,
            "first_batch_s_epoch_2": epochs[1][0][0],
            "total_s": arrivals[-1], "steady_patches_per_s": steady, "overall_patches_per_s": patches / arrivals[-1],
            "steady_patches_per_s_per_core": steady / workers, "overrides": overrides}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", help="also write the JSON here")
    parser.add_argument("--batches", type=int, default=60, help="batches (of 2 patches) per run")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--workers", type=int, default=cores(), help="loader workers (default: the cores)")
    parser.add_argument("overrides", nargs="*", help="extra config overrides, e.g. data.augmentation.blur_probability=0")
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(Path(args.data), args.batches, args.workers, args.overrides)))
        return

    from covlight.data.synthetic import write_phantom_dataset

    report = {"machine": machine_info(), "method": __doc__.split("\n\n", 1)[1].strip(), "cores": cores(),
              "bar_patches_per_s_per_core": BAR_PER_CORE, "extra_overrides": args.overrides}
    with tempfile.TemporaryDirectory(prefix="covlight-bench-") as name:
        data = Path(name) / "data"
        write_phantom_dataset(data / "covid19_ct_seg", cases=PHANTOM_CASES, size="demo", progress=False)
        runs = []
        for _ in range(args.rounds):
            run = run_worker(__file__, ["--worker", "--data", str(data), "--batches", str(args.batches),
                                        "--workers", str(args.workers), *args.overrides])
            runs.append(run)
            log("loader: " + (run.get("error") or f"first batch {run['first_batch_s']:.1f} s (epoch 2: "
                              f"{run['first_batch_s_epoch_2']:.1f} s), steady "
                              f"{run['steady_patches_per_s']:.2f} patches/s ({run['steady_patches_per_s_per_core']:.2f}"
                              f" per core), overall {run['overall_patches_per_s']:.2f} patches/s"))
    report["runs"] = runs
    errors = [r["error"] for r in runs if "error" in r]
    if errors:
        report["errors"] = errors
    else:
        figures = {key: median(r[key] for r in runs) for key in
                   ("first_batch_s", "first_batch_s_epoch_2", "steady_patches_per_s", "overall_patches_per_s", "steady_patches_per_s_per_core")}
        figures["overall_patches_per_s_per_core"] = figures["overall_patches_per_s"] / args.workers
        report.update(median=figures, bar_met=figures["steady_patches_per_s_per_core"] >= BAR_PER_CORE)
    emit(report, args.out)


if __name__ == "__main__":
    main()

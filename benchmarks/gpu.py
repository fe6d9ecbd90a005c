"""The GPU path: training steps/s of the default 3D config, data-loader wait, inference s/case, NSD ms/case (issue 7).

    python benchmarks/gpu.py [--out FILE] [--steps N] [--variants bf16,channels_last,compile]

Needs a CUDA GPU (exits with a message, status 2, when there is none). Every figure is recorded with the GPU's
name, the CPU count and the load average.
- Training: covlight's config for task 1 (fold 0, lung_infection) with `model=unet3d` (patch 128x128x64, batch 2,
  deep supervision) and `trainer=gpu` (bf16-mixed), logger=csv, the default callbacks, `trainer.fit` for one epoch
  of `--steps` batches (validation off) from the real data module: 4 phantom cases resampled to 0.8 x 0.8 x 2.5 mm
  (about 420-510 x 420-510 x 55-140 voxels, a chest CT's size at that spacing), `data.sampling.num_workers` = the cores.
  Variants, each in its own process: `bf16` (the preset), `channels_last` (+ model.module.channels_last=true),
  `compile` (+ model.module.compile=true). A step is the time between the ends of consecutive steps; the loader
  wait is the time from the end of a step to the start of the next (fetching the batch and moving it to the GPU).
  The first 20% of the steps (at least 5; compilation happens there) are left out.
- Inference: `SupervisedSegmentation.predict_volume` (Gaussian sliding window, overlap 0.5, batch 2) of a
  512x512x160 synthetic CT under bf16 autocast, without and with mirroring (axes 1, 2), the default 3D net.
- NSD: `covlight.metrics.normalized_surface_dice` on CUDA tensors, the two 512x512x300 cases of
  `benchmarks/metrics.py` (lung at 1 mm, infection at 3 mm): the first call (cold) and the best of three.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from common import emit, log, machine_info, median, run_worker

VARIANTS = {"bf16": [], "channels_last": ["model.module.channels_last=true"], "compile": ["model.module.compile=true"]}
TARGET_SPACING = [0.8, 0.8, 2.5]
PHANTOM_CASES = ["coronacases_008", "coronacases_007", "radiopaedia_36_86526_0", "radiopaedia_4_85506_1"]


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from covlight.config import conf_dir

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=overrides)


def train_worker(folder: Path, variant: str, steps: int) -> dict:
    import warnings

    warnings.simplefilter("ignore")
    import lightning.pytorch as pl
    import torch
    from hydra.utils import instantiate

    overrides = ["task=task1", "subtask=lung_infection", "fold=0", "model=unet3d", "trainer=gpu", "logger=csv",
                 "data.cases.missing=skip", f"data.preprocessing.target_spacing=[{','.join(map(str, TARGET_SPACING))}]",
                 f"data.sampling.num_workers={cores()}", f"data.sampling.batches_per_epoch={steps}", "trainer.max_epochs=1",
                 "+trainer.limit_val_batches=0", "print_config=false", f"paths.data_dir={folder / 'data'}",
                 f"paths.output_dir={folder / f'run-{variant}'}", *VARIANTS[variant]]
    cfg = compose(overrides)
    pl.seed_everything(0, verbose=False)
    datamodule = instantiate(cfg.data)
    module = instantiate(cfg.model.module)
    starts, ends = [], []

    class Clock(pl.Callback):
        def on_train_batch_start(self, *args) -> None:
            starts.append(time.perf_counter())

        def on_train_batch_end(self, *args) -> None:
            torch.cuda.synchronize()
            ends.append(time.perf_counter())

    callbacks = [instantiate(c) for c in cfg.callbacks.values() if c is not None] + [Clock()]
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=[instantiate(c) for c in cfg.logger.values()])
    fit_start = time.perf_counter()
    trainer.fit(module, datamodule=datamodule)
    skip = max(5, steps // 5)
    step_s = [b - a for a, b in zip(ends[skip - 1:], ends[skip:], strict=False)]
    wait_s = [s - e for e, s in zip(ends[skip - 1:], starts[skip:], strict=False)]
    return {"variant": variant, "overrides": overrides, "steps": len(ends), "timed_steps": len(step_s),
            "first_batch_s": starts[0] - fit_start, "median_step_s": median(step_s),
            "steps_per_s": len(step_s) / sum(step_s), "median_loader_wait_s": median(wait_s),
            "loader_wait_fraction": sum(wait_s) / sum(step_s),
            "peak_gpu_memory_gb": torch.cuda.max_memory_allocated() / 2**30}


def inference_worker() -> dict:
    import torch
    from hydra.utils import instantiate
    from memory import synthetic_ct

    cfg = compose(["model=unet3d", "subtask=lung_infection", "paths.output_dir=unused"])
    module = instantiate(cfg.model.module).cuda().eval()
    image, _ = synthetic_ct((512, 512, 160))
    volume = torch.from_numpy(image / 255.0).float()[None].cuda()
    results = {}
    for mirror in ((), (1, 2)):
        module.inference["mirror_axes"] = list(mirror)
        times = []
        for _ in range(2):
            torch.cuda.synchronize()
            start = time.perf_counter()
            with torch.autocast("cuda", dtype=torch.bfloat16):
                module.predict_volume(volume)
            torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        results["mirror" if mirror else "plain"] = {"first_s": times[0], "second_s": times[1]}
    return {"shape": [512, 512, 160], "patch": list(module.patch_size), "s_per_case": results,
            "peak_gpu_memory_gb": torch.cuda.max_memory_allocated() / 2**30}


def nsd_worker() -> dict:
    import torch
    from metrics import infection_case, lung_case

    from covlight.metrics import normalized_surface_dice

    shape, spacing = (512, 512, 300), (0.7, 0.7, 1.0)
    results = {}
    for name, (gt, pred), tolerance in (("lung", lung_case(shape), 1.0),
                                        ("infection", infection_case(shape, spacing), 3.0)):
        gt, pred = torch.from_numpy(gt).cuda(), torch.from_numpy(pred).cuda()
        times = []
        for _ in range(4):
            torch.cuda.synchronize()
            start = time.perf_counter()
            value = normalized_surface_dice(pred, gt, spacing, tolerance)
            torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        results[name] = {"tolerance_mm": tolerance, "nsd": float(value), "cold_ms": 1000 * times[0],
                         "warm_best_ms": 1000 * min(times[1:])}
    return {"shape": list(shape), "spacing_mm": list(spacing), "cases": results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", help="also write the JSON here")
    parser.add_argument("--steps", type=int, default=60, help="training steps per variant")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--worker", choices=("train", "inference", "nsd"), help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    args = parser.parse_args()

    import torch

    if not torch.cuda.is_available():
        print(f"benchmarks/gpu.py needs a CUDA GPU and this machine has none (torch {torch.__version__}, "
              f"CUDA build: {torch.version.cuda}). Run it on a GPU machine with a CUDA build of torch installed "
              "first (README: make install TORCH_PIN=...); the CPU benchmarks are `make bench`.",
              file=sys.stderr)
        sys.exit(2)
    if args.worker == "train":
        print(json.dumps(train_worker(Path(args.folder), args.variant, args.steps)))
        return
    if args.worker:
        print(json.dumps(inference_worker() if args.worker == "inference" else nsd_worker()))
        return

    from covlight.data.synthetic import write_phantom_dataset

    report = {"machine": machine_info(), "method": __doc__.split("\n\n", 1)[1].strip(), "cores": cores()}
    report["machine"]["gpu_capability"] = list(torch.cuda.get_device_capability(0))
    report["machine"]["gpu_memory_gb"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    with tempfile.TemporaryDirectory(prefix="covlight-bench-") as name:
        folder = Path(name)
        write_phantom_dataset(folder / "data" / "covid19_ct_seg", cases=PHANTOM_CASES, size="demo", progress=False)
        report["training"] = {}
        for variant in args.variants.split(","):
            run = run_worker(__file__, ["--worker", "train", "--folder", str(folder), "--variant", variant,
                                        "--steps", str(args.steps)], timeout_s=900)
            report["training"][variant] = run
            log(f"train {variant}: " + (run.get("error") or f"{run['steps_per_s']:.2f} steps/s, loader wait "
                                        f"{100 * run['loader_wait_fraction']:.0f}%"))
    for what in ("inference", "nsd"):
        report[what] = run_worker(__file__, ["--worker", what], timeout_s=900)
        log(f"{what}: {json.dumps(report[what])[:300]}")
    emit(report, args.out)


if __name__ == "__main__":
    main()

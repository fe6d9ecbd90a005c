"""A small study on phantoms: supervised training vs semi-supervised / domain-adaptation methods, several seeds.

The setting follows task 3 on synthetic data: labelled = non-COVID tumour phantoms (the source) + the 4 COVID
phantoms of task 1 fold 0 (the target); unlabelled = COVID phantoms under other case ids (never a test case);
test = fold 0's other 16 COVID phantoms; subtask infection; a small 2D U-Net on small phantoms. Every method
gets the same data, schedule and seeds; the score is the mean over test cases of LesionDSC and LesionNSD-3mm, then
mean ± std over seeds. It prints and writes JSON (whatever it shows):

    python benchmarks/methods_study.py --out benchmarks/results/methods_phantom_study.json

Each finished run is appended to <work>/runs.jsonl; a rerun with the same settings skips the runs found there.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf, open_dict

from covlight.config import conf_dir
from covlight.data.canonical import affine_from_spacing, hu_to_0_255, write_case, write_dataset_json
from covlight.data.synthetic import make_phantom, write_phantom_dataset
from covlight.splits import COVID, official_split
from covlight.train import run

SOURCE, POOL = "phantom_tumour", "phantom_covid_pool"
METHODS = {"supervised": "supervised", "mean_teacher": "mean_teacher", "entropy_min": "entropy_min",
           "ua_mt": "ua_mt", "cps": "cps", "dann": "dann", "intensity_dg": "supervised",
           "fewshot_strong_aug": "supervised", "ssl_finetune": "supervised", "ssl_pretrain": "ssl_pretrain"}
RECIPES = {"intensity_dg": "intensity_dg", "fewshot_strong_aug": "fewshot_strong_aug"}  # data-only methods
ARMS = [m for m in METHODS if m != "ssl_pretrain"]  # ssl_pretrain is step 1 of ssl_finetune
COLUMNS = ("LesionDSC", "LesionNSD-3mm")


def write_data(root: Path, source_cases: int, pool_cases: int) -> None:
    write_phantom_dataset(root / COVID, cases=20, seed=0, size="small", progress=False)
    write_phantom_dataset(root / SOURCE, cases=source_cases, kind="tumour", size="small", progress=False)
    if not (root / POOL / "dataset.json").is_file():
        entries = {}
        for index in range(1, pool_cases + 1):
            case_id = f"pool_{index:03d}"
            phantom = make_phantom(case_id, seed=1, size="small")
            entries[case_id] = write_case(root / POOL, case_id, hu_to_0_255(phantom.image_hu), None,
                                          affine_from_spacing(phantom.spacing), intensity="hu")
        write_dataset_json(root / POOL, POOL, entries, [])


def run_config(method: str, seed: int, root: Path, output_dir: Path, args, init_from: Path | None = None) -> dict:
    fold = official_split("task1", "infection", 0)
    overrides = [f"experiment={RECIPES[method]}"] if method in RECIPES else []
    overrides += [f"init_from={init_from}"] if init_from else []
    overrides += [
        "task=task1", "fold=0", "subtask=infection", "model=unet2d", f"method={METHODS[method]}", f"seed={seed}",
        "logger=none",
        "print_config=false", f"paths.data_dir={root}", f"paths.output_dir={output_dir}",
        "model.patch_size=[64,64,1]", "model.batch_size=8", "model.module.net.features_per_stage=[16,32,64,128]",
        "model.module.net.strides=[1,2,2,2]", "model.module.inference.batch_size=16",
        f"data.sampling.batches_per_epoch={args.batches}", "data.sampling.num_workers=1", f"trainer.max_epochs={args.epochs}",
        "callbacks.case_scoring.save_predictions=false", "callbacks.progress_bar.refresh_rate=0",
        f"optimizer={args.optimizer}", f"model.module.optimizer.lr={args.lr}",
    ]
    if METHODS[method] != "supervised":
        overrides += [f"data.unlabelled.datasets=[{POOL}]"]
    if method == "ua_mt":
        overrides += ["model.module.mc_samples=4"]
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    with open_dict(cfg):  # task 3 on phantoms: the tumour source + fold 0's 4 COVID cases; test on its 16 others
        cfg.data.split = OmegaConf.create({
            "_target_": "covlight.splits.Split",
            "train": {SOURCE: [f"phantom_tumour_{i:03d}" for i in range(1, args.source_cases + 1)],
                      COVID: fold.train[COVID]},
            "val": {}, "test": {COVID: fold.test[COVID]},
        })
    return cfg


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/methods_phantom_study.json"))
    parser.add_argument("--work", type=Path, default=Path("/tmp/covlight_methods_study"),
                        help="phantom data and run folders")
    parser.add_argument("--methods", nargs="+", default=ARMS, choices=ARMS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batches", type=int, default=25, help="batches per epoch")
    parser.add_argument("--optimizer", default="adamw", choices=["adamw", "sgd"])
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--source-cases", type=int, default=8)
    parser.add_argument("--pool-cases", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: no spinning on a busy machine)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    root = args.work / "data"
    write_data(root, args.source_cases, args.pool_cases)

    settings = {k: getattr(args, k) for k in ("epochs", "batches", "optimizer", "lr", "source_cases", "pool_cases")}
    done_file = args.work / "runs.jsonl"
    done = [json.loads(line) for line in done_file.read_text().splitlines()] if done_file.is_file() else []
    runs = []
    for method in args.methods:
        for seed in args.seeds:
            earlier = [r for r in done if (r["method"], r["seed"], r["settings"]) == (method, seed, settings)]
            if earlier:
                runs.append(earlier[-1])
                continue
            output_dir = args.work / "runs" / method / f"seed{seed}_{time.strftime('%Y%m%d-%H%M%S')}"
            start = time.perf_counter()
            pretrained = None
            if method == "ssl_finetune":  # step 1: self-supervised pre-training on the unlabelled pool, same budget
                pretrained = output_dir.with_name(output_dir.name + "_pretrain")
                run(run_config("ssl_pretrain", seed, root, pretrained, args))
            summary = run(run_config(method, seed, root, output_dir, args, init_from=pretrained))["test"][COVID]
            seconds = time.perf_counter() - start
            scores = {column: summary[column]["mean"] for column in COLUMNS}
            runs.append({"method": method, "seed": seed, "settings": settings, "seconds": round(seconds, 1), **scores})
            with open(done_file, "a") as handle:
                handle.write(json.dumps(runs[-1]) + "\n")
            print(json.dumps(runs[-1]), flush=True)

    results = {}
    for method in args.methods:
        rows = [r for r in runs if r["method"] == method]
        results[method] = {column: {"mean": statistics.mean(r[column] for r in rows),
                                    "std": statistics.stdev(r[column] for r in rows) if len(rows) > 1 else 0.0}
                           for column in COLUMNS}
    payload = {
        "setting": "task-3-like on phantoms: labelled = tumour phantoms (source) + task 1 fold 0's 4 COVID phantoms; "
                   "unlabelled = COVID phantoms with other ids; test = fold 0's 16 other COVID phantoms; infection; "
                   f"2D U-Net [16,32,64,128], patches 64x64, batch 8, {args.optimizer} lr {args.lr} with poly decay, "
                   f"{args.epochs} x {args.batches} steps; each method with its model config's defaults (recipes: their "
                   "augmentation); ssl_finetune = ssl_pretrain on the unlabelled pool for the same steps, then "
                   "supervised from its weights (its seconds include both)",
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "results": results,
        "runs": runs,
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "cpu": platform.processor()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=1) + "\n")
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()

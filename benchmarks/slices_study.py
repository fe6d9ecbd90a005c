"""Which 2D recipe is best on real COVID CT slices? 5-fold cross-validation on the 50 doctor-labelled COVID-SemiSeg
training slices (binary infection masks), every arm at the same budget of optimizer steps (issue 19).

Each held-out slice is predicted through covlight.predict (the path a user takes: the original JPEG in, the
foreground probability at the picture's own size out) and scored two ways: covlight's DSC and NSD (the benchmark's
infection tolerance, 3 px: slices have no spacing), and the threshold-averaged Dice the COVID-SemiSeg papers report
(covlight.metrics.threshold_dice), with the hard Dice of the argmax beside it.

    python benchmarks/slices_study.py --shared ../shared/data --out benchmarks/results/slices_study.json

It is long on 2 cores, so it is resumable: each arm x fold x seed writes its own result file (the per-image scores,
a few kB) under --results, benchmarks/results/slices_study/ in the repository, the moment it is scored, and a rerun
skips what exists (a run killed while training resumes from its last checkpoint under --work: resume=auto). The
result files are committed: the study outlives the machine that ran it, and anyone can redo the summary. `--arms`, `--folds` and `--seeds` choose a part (screen on 2 folds first);
the JSON, rewritten after every result (or by `--summary-only`), summarises the result files that exist and names
the missing ones. `--quick` checks the whole path in a
few minutes (tiny budget, its own work folder); its figures mean nothing.

Another budget (`--epochs`, `--batches`, `--batch-size`; e.g. a longer schedule on a GPU) names its result files
and runs with it (`fold0-seed1-3000steps-batch8.json`): the skip and the resume above must never find the 300-step
ones, and its summary pools only its own budget's results.

Arms without training of their own: `<arm>_tta` predicts that arm's runs with test-time mirroring; `ensemble:<arm>`
averages the probabilities of that arm's seeds (models trained on the same slices; a cross-validated stand-in for
nnU-Net's 5-fold ensemble, whose members each see 4/5 of the data).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
from PIL import Image

RESULTS = Path(__file__).resolve().parent / "results" / "slices_study"

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_info  # noqa: E402
from nnunet_v2_arm import NnUNetV2  # noqa: E402

from covlight.atomic import replacing, write_json  # noqa: E402
from covlight.benchmark import METRICS_FILE, STRUCTURES  # noqa: E402
from covlight.data.custom_split import custom_split  # noqa: E402
from covlight.metrics import dice, normalized_surface_dice  # noqa: E402
from covlight.metrics.threshold_dice import THRESHOLDS, dice_per_threshold  # noqa: E402

DATASET, POOL = "semiseg", "semiseg_pool"
TRAIN_FOLDER = "covid_semiseg_train/TrainingSet/LungInfection-Train/Doctor-label"
POOL_FOLDER = "covid_semiseg_unlabelled"
NUM_FOLDS, SPLIT_SEED = 5, 0
TOLERANCE = STRUCTURES["infection"].tolerance_mm
DSC = STRUCTURES["infection"].dsc_column

# Every arm is the base run plus its overrides. The base is covlight's default 2D recipe on a custom task.
BASE = ["task=custom", f"task.name={DATASET}", "subtask=infection", "model=unet2d", "logger=none",
        "print_config=false", "callbacks.progress_bar.refresh_rate=0", "callbacks.case_scoring.save_predictions=false",
        "data.sampling.num_workers=1", "data.validation.patches=20", "resume=auto"]
FLIPS = ["data.augmentation.flip_axes=[0,1]", "data.augmentation.rot90_probability=0.5"]
RESIZE = ["data.slices.policy=resize", "data.slices.size=[256,256]"]
SEMI = [f"data.unlabelled.datasets=[{POOL}]"]
# A step of today's default net (32..512 features) costs about 8 s at batch 8 on 2 cores, so the recipe's factors
# are screened on a net of half the width (4x cheaper); the width arms (narrow, default, wide) compare nets alone.
NARROW = ["model.module.net.features_per_stage=[16,32,64,128,256,256]"]
# The one factor that helped on the 2-fold screen (flips did not add to it); the semi-supervised arms are built on
# it (part 5).
RECIPE = [*NARROW, *RESIZE]
# The net and optimizer of benchmarks/active_learning.py (4 stages of 16..128 features, dropout 0.1, AdamW at lr 1e-3),
# which scored higher on the same held-out slices than the half-width 6-stage net with SGD did in
# benchmarks/efficiency_real.py at 128 x 128: is it the better recipe at this budget?
SMALL_ADAMW = ["model.module.net.features_per_stage=[16,32,64,128]", "model.module.net.strides=[1,2,2,2]",
               "model.module.net.dropout=0.1", "optimizer=adamw", "model.module.optimizer.lr=1e-3"]
SMALL128 = [*SMALL_ADAMW, "data.slices.policy=resize", "data.slices.size=[128,128]", "model.patch_size=[128,128,1]"]
TRAINED = {
    "default": [],
    "resize": RESIZE,  # experiments/slices2d.yaml as shipped: today's width, every slice resized
    "wide": ["model.module.net.features_per_stage=[48,96,192,384,512,512]"],
    "narrow": NARROW,
    "narrow_flips_rot90": [*NARROW, *FLIPS],
    "narrow_resize": [*NARROW, *RESIZE],
    "narrow_adamw": [*NARROW, "optimizer=adamw"],
    "narrow_resize_flips": [*NARROW, *RESIZE, *FLIPS],
    "small_adamw_resize": [*SMALL_ADAMW, *RESIZE],
    "small_adamw_resize128": SMALL128,
    # The semi-supervised methods on the 4x cheaper small net at 128 x 128, each at its default weight, and each
    # method's main knob, its weight, once more: mean teacher and entropy minimisation at 10x their default (at 0.1
    # their terms hardly moved the 300-step runs), CPS, which leaned positive at 1.0, at 3x.
    **{f"small128_{method}": [*SMALL128, f"method={method}", *SEMI]
       for method in ("mean_teacher", "ua_mt", "cps", "entropy_min")},
    "small128_mean_teacher_w1": [*SMALL128, "method=mean_teacher", *SEMI, "model.module.unsupervised_weight=1.0"],
    "small128_entropy_min_w1": [*SMALL128, "method=entropy_min", *SEMI, "model.module.unsupervised_weight=1.0"],
    "small128_cps_w3": [*SMALL128, "method=cps", *SEMI, "model.module.unsupervised_weight=3.0"],
    # The one method whose gain cleared 0 on the small net, on the shipped recipe (full width, 256 x 256).
    "resize_entropy_min_w1": [*RESIZE, "method=entropy_min", *SEMI, "model.module.unsupervised_weight=1.0"],
    "narrow_resize_mean_teacher": [*RECIPE, "method=mean_teacher", *SEMI],
    "narrow_resize_ua_mt": [*RECIPE, "method=ua_mt", *SEMI],
    "narrow_resize_cps": [*RECIPE, "method=cps", *SEMI],
    "narrow_resize_entropy_min": [*RECIPE, "method=entropy_min", *SEMI],
}
# arm -> the arm it adds one factor to (the summary's paired "vs_base" difference)
BUILDS_ON = {"resize": "default", "resize_entropy_min_w1": "resize", "wide": "default", "narrow": "default", "narrow_flips_rot90": "narrow",
             "narrow_resize": "narrow", "narrow_adamw": "narrow", "narrow_resize_flips": "narrow_resize",
             "small_adamw_resize": "narrow_resize", "small_adamw_resize128": "small_adamw_resize",
             **{arm: "narrow_resize" for arm in TRAINED if arm.startswith("narrow_resize_")},
             **{arm: "small_adamw_resize128" for arm in TRAINED if arm.startswith("small128_")}}
# arm -> the trained arm it predicts with --mirror
PREDICTED = {"narrow_tta": "narrow", "default_tta": "default", "narrow_resize_flips_tta": "narrow_resize_flips",
             "narrow_resize_tta": "narrow_resize"}
DEFAULT = "default"  # covlight as it comes (model=unet2d): every arm is also compared with it (vs_default)
SHIPPED = "resize"  # experiments/slices2d.yaml: every arm is also compared with it (vs_shipped)
REFERENCE = "nnunet_v2"  # nnU-Net v2's own 2d configuration, in its own environment (benchmarks/nnunet_v2_arm.py)
# The committed results' budget (optimizer steps, batch size): their result files and runs carry no budget in their
# names; any other budget's do.
STUDY_BUDGET = (300, 8)
SCREEN = ["narrow", "narrow_tta", "narrow_flips_rot90", "narrow_resize", "narrow_adamw", "default", "resize", "wide"]


def main(argv=None) -> int:
    args = parse_args(argv)
    work = args.work.expanduser().resolve()
    source = args.shared.expanduser().resolve()
    arms = args.arms.split(",") if args.arms else SCREEN
    unknown = [a for a in arms if a not in TRAINED and a not in PREDICTED and a != REFERENCE
               and not a.startswith("ensemble:")]
    if unknown:
        print(f"unknown arm(s) {unknown}: choose from {sorted(TRAINED) + sorted(PREDICTED) + [REFERENCE]} or "
              "ensemble:<arm>", file=sys.stderr)
        return 2
    if args.summary_only:
        write_summary(args, work, arms)
        return 0
    if REFERENCE in arms and not args.nnunet_python:
        print(f"the {REFERENCE} arm needs --nnunet-python (see benchmarks/nnunet_v2_arm.py)", file=sys.stderr)
        return 2
    if not (source / TRAIN_FOLDER / "Imgs").is_dir():
        print(f"{source / TRAIN_FOLDER} not found: give --shared the folder that holds covid_semiseg_train",
              file=sys.stderr)
        return 2
    import_data(source, work, needs_pool=any(a in TRAINED and SEMI[0] in TRAINED[a] for a in arms))
    jobs = [(arm, fold, seed) for arm in arms for fold in args.folds for seed in
            ([min(args.seeds)] if arm.startswith("ensemble:") else args.seeds)]
    for number, (arm, fold, seed) in enumerate(jobs, start=1):
        result = result_file(args.results, arm, fold, seed, budget_suffix(args))
        if result.is_file():
            continue
        print(f"[{number}/{len(jobs)}] {arm} fold {fold} seed {seed}", flush=True)
        outcome = run_arm(args, work, source, arm, fold, seed)
        if outcome is None:
            print(f"  skipped: {arm} needs its trained runs first", flush=True)
            continue
        write_json(result, outcome)
        print(f"  threshold-averaged Dice {outcome['threshold_dice']:.4f}, hard Dice {outcome['hard_dice']:.4f}, "
              f"DSC {outcome['dsc']:.4f}, NSD {outcome['nsd']:.4f} ({training_time(outcome['train_seconds'])})",
              flush=True)
        write_summary(args, work, arms, quiet=True)  # after each result: an interrupted study still says what it has
    write_summary(args, work, arms)
    return 0


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shared", type=Path, default=Path("../shared/data"))
    parser.add_argument("--work", type=Path, default=Path("~/.cache/covlight/slices_study"))
    parser.add_argument("--out", type=Path, help="the summary JSON (default: benchmarks/results/slices_study.json; "
                        "with --quick, beside its runs)")
    parser.add_argument("--results", type=Path, default=RESULTS,
                        help="the folder of per-run result files (default: the committed ones)")
    parser.add_argument("--arms", help=f"comma-separated (default: the screen, {','.join(SCREEN)})")
    parser.add_argument("--folds", type=lambda s: [int(x) for x in s.split(",")], default=list(range(NUM_FOLDS)))
    parser.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=[0])
    parser.add_argument("--epochs", type=int, default=12, help="the budget: epochs x batches per epoch steps")
    parser.add_argument("--batches", type=int, default=25, help="optimizer steps per epoch")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2, help="torch threads of each training run (OMP_NUM_THREADS)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="where every arm trains and predicts (cuda: trainer=gpu, bf16-mixed)")
    parser.add_argument("--nnunet-python", type=Path, help=f"the python of nnU-Net v2's environment ({REFERENCE})")
    parser.add_argument("--summary-only", action="store_true",
                        help="write the JSON from the result files that exist (e.g. while another process runs)")
    parser.add_argument("--quick", action="store_true", help="a tiny budget and net, to check the path end to end")
    args = parser.parse_args(argv)
    if args.quick:
        args.epochs, args.batches, args.batch_size = 1, 2, 2
        args.work = args.work.with_name(args.work.name + "_quick")
        args.results = args.work / "results"  # its figures mean nothing: never beside the study's
        args.out = args.out or args.work / "slices_study.json"
    args.out = args.out or RESULTS.with_suffix(".json")
    return args


def import_data(source: Path, work: Path, needs_pool: bool) -> None:
    """The labelled slices (255 -> infection) and, for the semi-supervised arms, the unlabelled pool, imported once."""
    data = work / "data"
    if not (data / DATASET / "dataset.json").is_file():
        prepare(["--src", str(source / TRAIN_FOLDER), "--name", DATASET, "--images", "Imgs/*.jpg",
                 "--labels", "GT/*.png", "--label-map", "255:3", "--intensity", "8bit", "--dest", str(data)])
    if needs_pool and not (data / POOL / "dataset.json").is_file():
        prepare(["--src", str(source / POOL_FOLDER), "--name", POOL, "--images", "Imgs/*.jpg", "--labels", "none",
                 "--intensity", "8bit", "--dest", str(data)])


def prepare(arguments: list[str]) -> None:
    subprocess.run([sys.executable, "-m", "covlight.prepare", "folder", *arguments], check=True)


def held_out(work: Path, fold: int) -> list[str]:
    split = custom_split([DATASET], str(work / "data"), fold, NUM_FOLDS, ["infection"], seed=SPLIT_SEED)
    return sorted(split.test[DATASET], key=int)


def budget_suffix(args) -> str:
    """'' at the study's budget, '-<steps>steps-batch<batch size>' at any other."""
    budget = (args.epochs * args.batches, args.batch_size)
    return "" if budget == STUDY_BUDGET else f"-{budget[0]}steps-batch{budget[1]}"


def result_file(results: Path, arm: str, fold: int, seed: int, suffix: str) -> Path:
    return results / arm.replace(":", "-") / f"fold{fold}-seed{seed}{suffix}.json"


def training_time(seconds: float | None) -> str:
    return "resumed: no time of its own" if seconds is None else f"{seconds:.0f} s training"


RESULT_NAME = re.compile(r"fold\d+-seed\d+(?P<suffix>.*)\.json")


def read_results(results: Path, arm: str, suffix: str | None = None) -> list[dict]:
    """The arm's result files: those of one budget (its `budget_suffix`), or of every budget with None."""
    paths = sorted((results / arm.replace(":", "-")).glob("fold*-seed*.json"))
    return [json.loads(p.read_text()) for p in paths
            if suffix is None or RESULT_NAME.fullmatch(p.name)["suffix"] == suffix]


def overrides(args, work: Path, arm: str, fold: int, seed: int) -> list[str]:
    budget = [*(["trainer=gpu"] if args.device == "cuda" else []),
              f"trainer.max_epochs={args.epochs}", f"data.sampling.batches_per_epoch={args.batches}",
              f"model.batch_size={args.batch_size}"]
    if args.quick:
        budget += ["model.module.net.features_per_stage=[8,16,32]", "model.module.net.strides=[1,2,2]",
                   "model.patch_size=[64,64,1]", "data.validation.patches=2"]
    return [*BASE, *budget, *TRAINED[arm], f"name={arm}{budget_suffix(args)}", f"fold={fold}", f"seed={seed}",
            f"paths.data_dir={work / 'data'}", f"paths.output_root={work / 'runs'}"]


def run_folder(work: Path, name: str, fold: int, seed: int) -> Path:
    """The folder that holds the run folders (one per start) of a run name (an arm and its `budget_suffix`) x fold x
    seed."""
    return work / "runs" / DATASET / "infection" / name / f"fold{fold}-seed{seed}"


def finished_run(work: Path, name: str, fold: int, seed: int) -> Path | None:
    for folder in sorted(run_folder(work, name, fold, seed).glob("*"), reverse=True):
        status = folder / "status.json"
        if status.is_file() and json.loads(status.read_text()).get("state") == "finished":
            return folder
    return None


def train(args, work: Path, arm: str, fold: int, seed: int) -> tuple[Path, float | None]:
    """Train (or resume) one run and time it. A resumed run's time is None: this call saw only part of its training,
    and a partial time would pull the study's seconds per fold down."""
    name = arm + budget_suffix(args)
    run = finished_run(work, name, fold, seed)
    if run is not None:
        timing = run / "study_seconds.json"
        return run, json.loads(timing.read_text())["seconds"] if timing.is_file() else None
    resumed = any(run_folder(work, name, fold, seed).glob("*/checkpoints/last.ckpt"))
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "covlight", *overrides(args, work, arm, fold, seed)], check=True, env=env)
    seconds = None if resumed else time.perf_counter() - start
    run = finished_run(work, name, fold, seed)
    if run is None:
        raise RuntimeError(f"{arm} fold {fold} seed {seed}: the run ended without a finished run folder")
    write_json(run / "study_seconds.json", {"seconds": seconds, "resumed": resumed})
    return run, seconds


def run_arm(args, work: Path, source: Path, arm: str, fold: int, seed: int) -> dict | None:
    cases = held_out(work, fold)
    tag = f"{arm.replace(':', '-')}-fold{fold}-seed{seed}{budget_suffix(args)}"
    if arm == REFERENCE:
        return reference_arm(args, work, source, fold, seed, cases, tag)
    if arm in TRAINED:
        run, seconds = train(args, work, arm, fold, seed)
        runs, mirror = [run], False
    elif arm in PREDICTED:
        run = finished_run(work, PREDICTED[arm] + budget_suffix(args), fold, seed)
        if run is None:
            return None
        runs, mirror, seconds = [run], True, 0.0
    else:
        member = arm.split(":", 1)[1]
        runs = [finished_run(work, member + budget_suffix(args), fold, s) for s in args.seeds]
        if len(runs) < 2 or None in runs:
            return None
        mirror, seconds = False, 0.0
    probabilities = predict(work, source, runs, cases, mirror, tag, args.device)
    tested = run_test_dsc(runs[0]) if arm in TRAINED else None
    return score(source, cases, probabilities) | {"run_test_dsc": tested,
        "arm": arm, "fold": fold, "seed": seed, "runs": [str(r.relative_to(work)) for r in runs],
        "train_seconds": seconds,
        "steps": args.epochs * args.batches, "batch_size": args.batch_size, "device": args.device,
        "torch_threads": args.threads,
        "overrides": TRAINED.get(arm, []), "mirror": mirror}


def reference_arm(args, work: Path, source: Path, fold: int, seed: int, cases: list[str], tag: str) -> dict:
    """nnU-Net v2 on the same fold and number of steps (its own batch size, said in the result); each seed trains a
    model of its own."""
    nnunet = NnUNetV2(args.nnunet_python, work, f"seed{seed}{budget_suffix(args)}", args.device)
    everything = sorted(json.loads((work / "data" / DATASET / "dataset.json").read_text())["cases"], key=int)
    nnunet.prepare(source / TRAIN_FOLDER / "Imgs", source / TRAIN_FOLDER / "GT", everything,
                   [held_out(work, k) for k in range(NUM_FOLDS)])
    model, seconds = nnunet.train(fold, args.epochs, args.batches)
    probabilities = nnunet.predict(fold, cases, work / "predictions" / tag)
    return score(source, cases, probabilities) | {
        "arm": REFERENCE, "fold": fold, "seed": seed, "runs": [str(model)], "train_seconds": seconds,
        "steps": args.epochs * args.batches, "batch_size": nnunet.batch_size(), "device": args.device,
        "overrides": [], "mirror": True,
        "run_test_dsc": None}


def predict(work: Path, source: Path, runs: list[Path], cases: list[str], mirror: bool, tag: str,
            device: str) -> dict:
    """The foreground probability of each held-out slice, at the picture's own size, as covlight.predict gives it."""
    inputs = work / "inputs" / tag
    inputs.mkdir(parents=True, exist_ok=True)
    for case in cases:
        link = inputs / f"{case}.jpg"
        if not link.exists():
            link.symlink_to(source / TRAIN_FOLDER / "Imgs" / f"{case}.jpg")
    output = work / "predictions" / tag
    command = [sys.executable, "-m", "covlight.predict", "--input", str(inputs), "--output", str(output),
               "--probabilities", "--overwrite", "--device", device]
    for run in runs:
        command += ["--run", str(run)]
    subprocess.run(command + (["--mirror"] if mirror else []), check=True)
    return {case: np.load(output / "probabilities" / f"{case}_infection.npy") for case in cases}


def run_test_dsc(run: Path) -> float:
    """The run's own test phase score (canonical data, covlight's sliding window): predict's path must agree."""
    with open(run / METRICS_FILE, newline="") as handle:
        values = [float(row[DSC]) for row in csv.DictReader(handle) if row.get(DSC)]
    return float(np.mean(values))


def score(source: Path, cases: list[str], probabilities: dict) -> dict:
    per_image = []
    for case in cases:
        truth = np.asarray(Image.open(source / TRAIN_FOLDER / "GT" / f"{case}.png").convert("L")) > 127
        probability = probabilities[case]
        hard = probability >= 0.5
        overlap = np.logical_and(hard, truth).sum()
        per_image.append({
            "case": case,
            # the mean over the 256 thresholds: the papers' figure over images is the mean of these (both are means)
            "threshold_dice": float(dice_per_threshold(probability, truth).mean()),
            # the papers' rule at the one threshold 0.5 of the raw probability: 0 without a true positive
            "hard_dice": float(2 * overlap / (hard.sum() + truth.sum())) if overlap else 0.0,
            # the benchmark's: NaN when slice and prediction are both empty (left out of the mean)
            "dsc": dice(hard, truth),
            "nsd": normalized_surface_dice(hard, truth, (1.0, 1.0), TOLERANCE),
        })
    return {"images": per_image, **{k: mean_of(per_image, k) for k in ("threshold_dice", "hard_dice", "dsc", "nsd")}}


def mean_of(rows: list[dict], key: str) -> float:
    values = [row[key] for row in rows if not np.isnan(row[key])]
    return float(np.mean(values)) if values else float("nan")


def summary(args, work: Path, arms: list[str]) -> dict:
    """Per arm: the threshold-averaged Dice over every scored image (each seed apart, then mean and spread over
    seeds), hard Dice, DSC and NSD, and which fold x seed files are still missing."""
    table, suffix = {}, budget_suffix(args)
    for arm in arms:
        found = read_results(args.results, arm, suffix)  # another budget's results are not pooled with these
        others = [r for r in read_results(args.results, arm) if r not in found]
        results = [r for r in found if r["fold"] in args.folds and r["seed"] in args.seeds]
        by_seed = {}
        for result in results:
            by_seed.setdefault(result["seed"], []).append(result)
        seeds = {seed: seed_scores(runs) for seed, runs in sorted(by_seed.items())}
        done = {(r["fold"], r["seed"]) for r in results}
        wanted = {(f, s) for f in args.folds for s in ([min(args.seeds)] if arm.startswith("ensemble:") else args.seeds)}
        timed = [r["train_seconds"] for r in results if r["train_seconds"] is not None]
        table[arm] = {
            "overrides": TRAINED.get(arm, []), "per_seed": seeds,
            "folds_done": sorted({r["fold"] for r in results}),
            "folds_per_seed": {seed: sorted(r["fold"] for r in results if r["seed"] == seed) for seed in seeds},
            "per_run": {f"fold{r['fold']}-seed{r['seed']}": {k: round(r[k], 4) for k in ("threshold_dice", "hard_dice")}
                        for r in sorted(results, key=lambda r: (r["seed"], r["fold"]))},
            "missing": [f"fold{f}-seed{s}" for f, s in sorted(wanted - done)],
            "recovered_runs": [f"fold{r['fold']}-seed{r['seed']}" for r in results if r["images"] is None],
            "other_budgets": sorted({f"fold{r['fold']}-seed{r['seed']}: {r['steps']} steps of batch {r['batch_size']}"
                                     for r in others}),
            "train_seconds_per_fold": round(statistics.mean(timed), 1) if timed else None,
            **{f"{k}_mean": round(statistics.mean([s[k] for s in seeds.values()]), 4) if seeds else None
               for k in ("threshold_dice", "hard_dice")},
            **{f"{k}_mean": round(statistics.mean([s[k] for s in seeds.values()]), 4)
               if seeds and None not in [s[k] for s in seeds.values()] else None for k in ("dsc", "nsd")},
            **seed_spread(by_seed),
        }
    runs = {(f, s) for f in args.folds for s in args.seeds}
    for arm in arms:
        table[arm]["vs_narrow"] = paired_difference(args.results, arm, "narrow", suffix, runs) if arm != "narrow" else None
        table[arm]["vs_shipped"] = paired_difference(args.results, arm, SHIPPED, suffix, runs) if arm != SHIPPED else None
        table[arm]["vs_default"] = paired_difference(args.results, arm, DEFAULT, suffix, runs) if arm != DEFAULT else None
        base = base_arm(arm)
        table[arm]["vs_base"] = base and {"arm": base, **(paired_difference(args.results, arm, base, suffix, runs) or {})}
        if suffix:  # another budget: what it changes against the same arm at the study's 300 steps
            table[arm]["vs_study_budget"] = paired_difference(args.results, arm, arm, suffix, runs, baseline_suffix="")
    return {
        "benchmark": "slices_study",
        "complete": all(not row["missing"] for row in table.values()),
        "data": f"{TRAIN_FOLDER} (50 slices, binary infection masks), {NUM_FOLDS} folds from split seed {SPLIT_SEED}",
        "budget": {"steps": args.epochs * args.batches, "batch_size": args.batch_size, "epochs": args.epochs,
                   "quick": args.quick},
        "scores": "threshold_dice: as the COVID-SemiSeg papers (256 thresholds of the per-image min-max normalised "
                  "probability, 0 without a true positive); hard_dice: the same rule at p >= 0.5 only; dsc, nsd: "
                  "covlight's (the benchmark's), NaN for an empty slice predicted empty, 3 px NSD tolerance",
        "thresholds": len(THRESHOLDS),
        "machine": machine_info(),
        "arms": table,
    }


def seed_scores(runs: list[dict]) -> dict:
    """One seed's scores over the images of its runs. A run recovered from an older summary has its means and its
    image count but no per-image scores: its threshold-averaged and hard Dice still enter, weighted by its images
    (both are means over images); DSC and NSD, which leave out empty slices, only when every run has its images."""
    count = sum(run_images(r) for r in runs)
    scores = {"images": count, **{k: round(sum(r[k] * run_images(r) for r in runs) / count, 4)
                                  for k in ("threshold_dice", "hard_dice")}}
    if any(r["images"] is None for r in runs):
        return scores | {"dsc": None, "nsd": None}
    images = [image for r in runs for image in r["images"]]
    return scores | {k: round(mean_of(images, k), 4) for k in ("dsc", "nsd")}


def seed_spread(by_seed: dict[int, list[dict]]) -> dict:
    """Max minus min over seeds of the threshold-averaged and hard Dice, each seed scored on the folds every seed has
    run (seeds on different folds would differ by their folds, not their seeds); None with one seed or none shared."""
    shared = set.intersection(*({r["fold"] for r in runs} for runs in by_seed.values())) if by_seed else set()
    if len(by_seed) < 2 or not shared:
        return {"seed_spread_folds": None, "threshold_dice_seed_spread": None, "hard_dice_seed_spread": None}
    scores = [seed_scores([r for r in runs if r["fold"] in shared]) for runs in by_seed.values()]
    return {"seed_spread_folds": sorted(shared),
            **{f"{k}_seed_spread": round(max(s[k] for s in scores) - min(s[k] for s in scores), 4)
               for k in ("threshold_dice", "hard_dice")}}


def run_images(result: dict) -> int:
    return len(result["images"]) if result["images"] is not None else result["image_count"]


def write_summary(args, work: Path, arms: list[str], quiet: bool = False) -> None:
    """The JSON summary at --out and its figure beside it (.png)."""
    table = summary(args, work, arms)
    write_json(args.out, table)
    figure(table, args.out.with_suffix(".png"))
    if not quiet:
        print(f"wrote {args.out} and {args.out.with_suffix('.png')}")


FOLD_MARKERS = "os^Dv"
SEED_COLOURS = ("tab:blue", "tab:orange", "tab:purple", "tab:brown", "tab:pink", "tab:olive")  # not green, red: gains


def run_fold_seed(name: str) -> tuple[int, int]:
    """The fold and seed of a run named as in `per_run` (`fold3-seed1`)."""
    fold, seed = name.removeprefix("fold").split("-seed")
    return int(fold), int(seed)


def figure(table: dict, path: Path) -> None:
    """Left: each run's threshold-averaged Dice (a dot per fold x seed, the bar at the mean over seeds); right: the
    paired difference from the half-width baseline with its 95% interval. Arms with no result are left out."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = [arm for arm, row in table["arms"].items() if row["per_run"]]
    paired = any(table["arms"][arm].get("vs_narrow") for arm in arms)
    fig, axes = plt.subplots(1, 2 if paired else 1, figsize=(12 if paired else 7, 0.45 * len(arms) + 1.6), dpi=110,
                             sharey=True, squeeze=False)
    runs_axis, gain_axis = axes[0][0], axes[0][-1]
    runs = {arm: [(name, *run_fold_seed(name), run) for name, run in table["arms"][arm]["per_run"].items()]
            for arm in arms}
    seeds = sorted({seed for arm in arms for _, _, seed, _ in runs[arm]})
    colours = {seed: SEED_COLOURS[i % len(SEED_COLOURS)] for i, seed in enumerate(seeds)}
    for y, arm in enumerate(arms):
        row = table["arms"][arm]
        for name, fold, seed, run in runs[arm]:
            colour = colours[seed]
            offset = 0.12 * (seeds.index(seed) - (len(seeds) - 1) / 2)
            runs_axis.plot(run["threshold_dice"], y + offset, FOLD_MARKERS[fold % len(FOLD_MARKERS)],
                           ms=5, alpha=0.7, color=colour,
                           markerfacecolor="none" if name in row["recovered_runs"] else colour)
        runs_axis.plot([row["threshold_dice_mean"]] * 2, [y - 0.3, y + 0.3], color="k", lw=2)
        difference = row.get("vs_narrow")
        if difference:
            low, high = difference["ci95"]
            centre = difference["threshold_dice_difference"]
            gain_axis.errorbar(centre, y, xerr=[[centre - low], [high - centre]], fmt="o", capsize=3,
                               color="tab:green" if low > 0 else "tab:red" if high < 0 else "tab:gray")
            gain_axis.annotate(f"n={difference['pairs']}", (high, y), xytext=(4, -3), textcoords="offset points",
                               fontsize=7)
    runs_axis.set_yticks(range(len(arms)), arms, fontsize=8)
    runs_axis.invert_yaxis()
    runs_axis.set_xlabel("threshold-averaged Dice on the held-out slices")
    legend = ", ".join(f"{colours[seed].removeprefix('tab:')} = seed {seed}" for seed in seeds)
    runs_axis.set_title(f"each run: marker = fold ({' '.join(FOLD_MARKERS)});\ncolour: {legend};\n"
                        "hollow: recovered, without per-image scores (paired with nothing);\n"
                        f"bar: mean over seeds; {table['budget']['steps']} steps", fontsize=9)
    if paired:
        gain_axis.axvline(0, color="k", lw=0.8)
        gain_axis.set(xlabel="minus narrow's, same images [95% bootstrap CI]", title="vs the half-width net (narrow)")
    fig.tight_layout()
    with replacing(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def base_arm(arm: str) -> str | None:
    """The arm this one adds one thing to: the model an ensemble or TTA arm predicts with, else BUILDS_ON."""
    if arm.startswith("ensemble:"):
        return arm.removeprefix("ensemble:")
    return PREDICTED.get(arm) or BUILDS_ON.get(arm)


def per_image(results: Path, arm: str, suffix: str, runs: set[tuple[int, int]],
              over_seeds: bool = False) -> dict[tuple, float]:
    """(fold, seed, image) -> the image's threshold-averaged Dice, for one arm at one budget and the given
    (fold, seed) runs (those with per-image scores); with `over_seeds`, (fold, image) -> its mean over those seeds."""
    scores = defaultdict(list)
    for result in read_results(results, arm, suffix):
        if (result["fold"], result["seed"]) in runs and result["images"] is not None:
            for image in result["images"]:
                key = (result["fold"], image["case"]) if over_seeds else (result["fold"], result["seed"], image["case"])
                scores[key].append(image["threshold_dice"])
    return {key: float(np.mean(values)) for key, values in scores.items()}


def paired_difference(results: Path, arm: str, baseline: str, suffix: str, runs: set[tuple[int, int]],
                      draws: int = 10000, baseline_suffix: str | None = None) -> dict | None:
    """The arm's threshold-averaged Dice minus the baseline's on the same images, folds and seeds (an ensemble or
    TTA arm: the seeds it shares), with a 95% bootstrap interval over images: the arms' difference without the
    fold-to-fold spread that both share. nnU-Net's seed only names a repeat (it draws its own randomness), so where
    it is one of the two, each image's scores are first averaged over each arm's seeds and paired by image. The
    baseline is at the same budget unless `baseline_suffix` names another."""
    over_seeds = REFERENCE in (arm, baseline)
    ours = per_image(results, arm, suffix, runs, over_seeds)
    theirs = per_image(results, baseline, suffix if baseline_suffix is None else baseline_suffix, runs, over_seeds)
    shared = sorted(set(ours) & set(theirs))
    if not shared:
        return None
    differences = np.array([ours[key] - theirs[key] for key in shared])
    rng = np.random.default_rng(0)
    means = differences[rng.integers(0, len(differences), size=(draws, len(differences)))].mean(axis=1)
    return {"pairs": len(shared), "threshold_dice_difference": round(float(differences.mean()), 4),
            "ci95": [round(float(np.percentile(means, 2.5)), 4), round(float(np.percentile(means, 97.5)), 4)]}


if __name__ == "__main__":
    sys.exit(main())

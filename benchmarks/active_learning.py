"""Simulated active learning on the 50 real COVID-SemiSeg training slices: does `covlight.suggest` choose better
slices to annotate than random selection?

Setting: the 50 slices of `covid_semiseg_train` (Inf-Net's COVID-SemiSeg, LungInfection-Train/Doctor-label; binary
infection masks, 255 -> infection) imported with `covlight.prepare folder` as the dataset `covid_semiseg`; 5 folds
of 10 held-out slices (covlight's generated folds, split seed 0). In each fold and seed, 10 of the fold's 40
training slices are labelled at random (drawn from (seed, fold)); then, for `--rounds` rounds, a 2D U-Net is
trained from scratch on the labelled slices, scored on the fold's 10 held-out slices (LesionDSC and LesionNSD-3mm,
mean over slices, as every covlight run scores its test cases), and `python -m covlight.suggest` (called
in-process, `--unit slice`) picks the next `--step` slices from the pool: the fold's training slices not yet
labelled. The held-out slices are the runs' test cases, so suggest refuses them: selection never sees them. Each
strategy (entropy, mc_dropout, ensemble) runs against random selection on the same folds, seeds and initial sets;
the last round's model is scored but selects nothing. With the defaults (10 + 3 x 10 of 40) the last round labels
all 40 training slices, so every strategy ends on the same set: the gains are at 20 and 30 slices.

Model (the same for every strategy, so that MC dropout has dropout to sample): `model=unet2d` with features
[16, 32, 64, 128], dropout 0.1, slices resized to 128x128 (`data.slices.policy=resize`; predictions resized back,
scored at each slice's own size), batch 8, AdamW lr 1e-3 with poly decay, a budget of `--steps` optimizer steps
per round (default 200, from scratch each round), no validation; MC dropout takes 8 passes. `ensemble` also
trains a second model per round (seed + 1000) beside the one every strategy scores. Models whose labelled set
and seed are the same are trained once and shared between strategies (round 0, and the last round when it labels
every training slice): 13 trainings per fold and seed, 195 for the full study. One step takes ~0.8 s on 2 quiet
cores (~4 s at load average 11), so about 4 min per training with its test, ~13 h in all on 2 quiet cores;
`--strategies entropy --seeds 0 1` cuts it to ~4 h.

Resumable: each (strategy, fold, seed, round) writes `<work>/results/<strategy>/fold<f>-seed<s>-round<r>.json` the
moment it is done (score, labelled slices, the slices chosen next); a rerun skips what exists and trains only what
is missing (an unfinished training run is started again). The summary (mean and std over folds x seeds per
round, and each strategy's paired difference from random with its 95% interval) and the figure are written from
whatever results exist, `"complete": false` until all are there:

    python benchmarks/active_learning.py --shared ../shared/data --work outputs/active_learning \\
        --out benchmarks/results/active_learning.json
    python benchmarks/active_learning.py --quick   # end to end in a few minutes: 1 fold, 1 seed, tiny budget
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf, open_dict

from covlight import prepare, suggest
from covlight.atomic import replacing, write_json
from covlight.config import conf_dir, read_status
from covlight.data.canonical import read_dataset
from covlight.data.custom_split import kfold
from covlight.metrics.results import CaseResults
from covlight.report.efficiency import interval
from covlight.train import run

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from common import machine_info  # noqa: E402

DATASET = "covid_semiseg"
SOURCE = Path("covid_semiseg_train/TrainingSet/LungInfection-Train/Doctor-label")
STRATEGIES = ("entropy", "mc_dropout", "ensemble", "random")
COLUMNS = ("LesionDSC", "LesionNSD-3mm")
FULL = {"folds": 5, "seeds": [0, 1, 2], "initial": 10, "step": 10, "rounds": 3, "steps": 200, "size": 128,
        "features": [16, 32, 64, 128], "strides": [1, 2, 2, 2], "batch": 8, "members": 2, "samples": 8}
COLOURS = {"random": "k", "entropy": "C0", "mc_dropout": "C1", "ensemble": "C2"}
QUICK = {"folds": 5, "fold_subset": [0], "seeds": [0], "initial": 10, "step": 10, "rounds": 1, "steps": 4,
         "size": 64, "features": [8, 16, 32], "strides": [1, 2, 2], "batch": 4, "members": 2, "samples": 2}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data",
                        help="the folder holding covid_semiseg_train/")
    parser.add_argument("--work", type=Path, default=REPO / "outputs" / "active_learning",
                        help="imported data, run folders and per-round results (resumable)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "active_learning.json")
    parser.add_argument("--strategies", nargs="+", default=["entropy", "mc_dropout", "ensemble"],
                        choices=[s for s in STRATEGIES if s != "random"], help="each runs against random")
    parser.add_argument("--seeds", nargs="+", type=int, help=f"default {FULL['seeds']}")
    parser.add_argument("--folds", nargs="+", type=int, help="which of the 5 folds (default: all)")
    parser.add_argument("--steps", type=int, help=f"optimizer steps per round (default {FULL['steps']})")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--quick", action="store_true",
                        help="1 fold, 1 seed, 1 round, a tiny net for 4 steps: the whole loop in minutes, into "
                             "<work>/quick (the committed results are not touched)")
    parser.add_argument("--summary-only", action="store_true",
                        help="train nothing: write the summary and figure from the result files there are")
    args = parser.parse_args()
    settings = dict(QUICK if args.quick else FULL)
    settings["fold_subset"] = args.folds or settings.get("fold_subset") or list(range(settings["folds"]))
    settings["seeds"] = args.seeds or settings["seeds"]
    settings["steps"] = args.steps or settings["steps"]
    work = args.work / "quick" if args.quick else args.work
    out = work / "active_learning.json" if args.quick else args.out
    torch.set_num_threads(args.threads)

    root = import_slices(args.shared, work / "data")
    cases = sorted(read_dataset(root / DATASET).cases)
    folds = kfold([(DATASET, case) for case in cases], settings["folds"], 0)
    strategies = ["random", *args.strategies]
    jobs = [(strategy, fold, seed) for fold in settings["fold_subset"] for seed in settings["seeds"]
            for strategy in strategies]
    total = len(jobs) * (settings["rounds"] + 1)
    started, done = time.perf_counter(), 0
    log(f"{len(jobs)} sequences (strategies {strategies} x folds {settings['fold_subset']} x seeds "
        f"{settings['seeds']}), {settings['rounds'] + 1} rounds each, {settings['steps']} steps per model; "
        f"results in {work / 'results'}")
    for strategy, fold, seed in [] if args.summary_only else jobs:
        held_out = sorted(case for _, case in folds[fold])
        training = [case for case in cases if case not in held_out]
        for _ in sequence(strategy, fold, seed, training, held_out, root, work, settings):
            done += 1
            elapsed = time.perf_counter() - started
            log(f"[{done}/{total}] {elapsed / 60:.1f} min")
    summary = summarise(work / "results", strategies, settings)
    write_json(out, {"setting": __doc__.split("\n\n")[1], "settings": settings, **summary,
                     "machine": machine_info()})
    figure(summary, settings, out.with_suffix(".png"))
    log(f"wrote {out} and {out.with_suffix('.png')} ({'complete' if summary['complete'] else 'partial'})")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def import_slices(shared: Path, root: Path) -> Path:
    """The 50 slices as a canonical dataset (once; a rerun finds it)."""
    if not (root / DATASET / "dataset.json").is_file():
        status = prepare.main(["folder", "--src", str(shared / SOURCE), "--name", DATASET, "--images", "Imgs/*.jpg",
                               "--labels", "GT/*.png", "--label-map", "255:3", "--intensity", "8bit",
                               "--licence", "COVID-SemiSeg (Inf-Net): research use", "--dest", str(root)])
        if status != 0:
            raise SystemExit(status)
    return root


def sequence(strategy: str, fold: int, seed: int, training: list[str], held_out: list[str], root: Path, work: Path,
             settings: dict):
    """The rounds of one (strategy, fold, seed); yields after each round (done now or found done)."""
    rng = np.random.default_rng([seed, fold])
    labelled = sorted(rng.choice(training, settings["initial"], replace=False).tolist())
    for round_ in range(settings["rounds"] + 1):
        path = work / "results" / strategy / f"fold{fold}-seed{seed}-round{round_}.json"
        if path.is_file():
            result = json.loads(path.read_text())
            if result["labelled"] != labelled:
                raise SystemExit(f"{path} was made from another labelled set: remove {path.parent} and rerun")
        else:
            start = time.perf_counter()
            log(f"{strategy} fold {fold} seed {seed} round {round_}: {len(labelled)} labelled slices")
            main_run = trained(labelled, held_out, fold, seed, root, work, settings)
            scores = test_scores(main_run)
            chosen = []
            if round_ < settings["rounds"]:
                members = [main_run] + [trained(labelled, held_out, fold, seed + 1000 * k, root, work, settings)
                                        for k in range(1, settings["members"])] if strategy == "ensemble" else [main_run]
                pool = [case for case in training if case not in labelled]
                chosen = select(strategy, members, pool, root, seed * 100 + round_, work / "suggest" / strategy / path.stem,
                                settings)
            result = {"strategy": strategy, "fold": fold, "seed": seed, "round": round_, "labelled": labelled,
                      "n_labelled": len(labelled), **scores, "chosen": chosen, "run": str(main_run),
                      "seconds": round(time.perf_counter() - start, 1)}
            write_json(path, result)
            log(f"  LesionDSC {scores['LesionDSC']:.3f}, NSD {scores['LesionNSD-3mm']:.3f}; chose {chosen}")
        labelled = sorted(labelled + result["chosen"])
        yield result


def trained(labelled: list[str], held_out: list[str], fold: int, seed: int, root: Path, work: Path,
            settings: dict) -> Path:
    """A finished run trained on `labelled` with `seed` and tested on `held_out`: found, or trained now."""
    key = hashlib.sha1(",".join(labelled).encode()).hexdigest()[:12]
    run_dir = work / "runs" / f"fold{fold}" / f"seed{seed}" / f"n{len(labelled)}-{key}"
    if read_status(run_dir).get("state") == "finished":
        return run_dir
    shutil.rmtree(run_dir, ignore_errors=True)  # an interrupted training starts again
    s = settings
    overrides = [
        "task=custom", f"task.name={DATASET}", "subtask=infection", "model=unet2d", f"seed={seed}", "fold=0",
        "logger=none", "print_config=false", f"paths.data_dir={root}", f"paths.output_dir={run_dir}",
        f"model.patch_size=[{s['size']},{s['size']},1]", f"model.batch_size={s['batch']}",
        f"model.module.net.features_per_stage={s['features']}", f"model.module.net.strides={s['strides']}",
        "model.module.net.dropout=0.1", "model.module.inference.batch_size=8",
        "data.slices.policy=resize", f"data.slices.size=[{s['size']},{s['size']}]",
        f"data.sampling.batches_per_epoch={s['steps']}", "trainer.max_epochs=1", "trainer.limit_val_batches=0",
        "data.sampling.num_workers=0", "callbacks.case_scoring.save_predictions=false",
        "callbacks.progress_bar.refresh_rate=0", "optimizer=adamw", "model.module.optimizer.lr=1e-3",
    ]
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    with open_dict(cfg):  # the labelled slices and the fold's held-out ones (the run's test cases)
        cfg.data.split = OmegaConf.create({"_target_": "covlight.splits.Split", "_convert_": "all",
                                           "train": {DATASET: labelled}, "val": {}, "test": {DATASET: held_out}})
    run(cfg)
    return run_dir


def test_scores(run_dir: Path) -> dict[str, float]:
    stats = CaseResults.read(run_dir / "metrics.csv").column_stats()
    return {column: stats[column]["mean"] for column in COLUMNS}


def select(strategy: str, runs: list[Path], pool: list[str], root: Path, seed: int, out: Path, settings) -> list[str]:
    """The next slices, as `python -m covlight.suggest` chooses them from the unlabelled pool."""
    arguments = [a for run_dir in runs for a in ("--run", str(run_dir))]
    status = suggest.main([*arguments, "--pool", str(root / DATASET), "--cases", *pool, "--budget",
                           str(settings["step"]), "--unit", "slice", "--strategy", strategy, "--seed", str(seed),
                           "--samples", str(settings["samples"]), "--sheet", "0", "--out", str(out), "--overwrite"])
    if status != 0:
        raise SystemExit(f"covlight.suggest failed (exit {status})")
    return [s.case for s in suggest.read_csv(out / "suggestions.csv")]


def summarise(results: Path, strategies: list[str], settings: dict) -> dict:
    """Per strategy and round: mean and std over (fold, seed); per strategy, the paired difference from random."""
    found = {}
    for path in sorted(results.glob("*/*.json")):
        result = json.loads(path.read_text())
        if result["fold"] in settings["fold_subset"] and result["seed"] in settings["seeds"]:
            found[result["strategy"], result["fold"], result["seed"], result["round"]] = result
    expected = [(s, f, seed, r) for s in strategies for f in settings["fold_subset"] for seed in settings["seeds"]
                for r in range(settings["rounds"] + 1)]
    curves, gains = {}, {}
    for strategy in strategies:
        curves[strategy] = []
        for round_ in range(settings["rounds"] + 1):
            rows = [found[key] for key in expected if key[0] == strategy and key[3] == round_ and key in found]
            if not rows:
                continue
            point = {"round": round_, "n_labelled": rows[0]["n_labelled"], "n": len(rows)}
            for column in COLUMNS:
                values = [row[column] for row in rows]
                point[column] = {"mean": statistics.mean(values),
                                 "std": statistics.stdev(values) if len(values) > 1 else 0.0}
            curves[strategy].append(point)
        if strategy == "random":
            continue
        gains[strategy] = []
        for round_ in range(settings["rounds"] + 1):
            pairs = [(found[key], found[("random", *key[1:])]) for key in expected
                     if key[0] == strategy and key[3] == round_ and key in found and ("random", *key[1:]) in found]
            if not pairs:
                continue
            point = {"round": round_, "n_labelled": pairs[0][0]["n_labelled"], "pairs": len(pairs)}
            for column in COLUMNS:
                differences = [ours[column] - theirs[column] for ours, theirs in pairs]
                mean, low, high = interval(differences)
                std = statistics.stdev(differences) if len(differences) > 1 else 0.0
                ci95 = None if len(differences) < 2 else [low, high]  # t-interval over the pairs
                point[column] = {"mean": mean, "std": std, "ci95": ci95}
            gains[strategy].append(point)
    missing = [key for key in expected if key not in found]
    return {"complete": not missing, "missing": len(missing), "curves": curves, "gain_over_random": gains}


def figure(summary: dict, settings: dict, path: Path) -> None:
    """LesionDSC against labelled slices (mean, band = std over folds x seeds), and the paired gain over random."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (curve_axis, gain_axis) = plt.subplots(1, 2, figsize=(10, 4), dpi=110)
    for strategy, points in summary["curves"].items():
        if not points:
            continue
        x = [p["n_labelled"] for p in points]
        mean = np.array([p["LesionDSC"]["mean"] for p in points])
        std = np.array([p["LesionDSC"]["std"] for p in points])
        curve_axis.plot(x, mean, marker="o", label=f"{strategy} (n={points[0]['n']})", color=COLOURS[strategy],
                        ls="--" if strategy == "random" else "-")
        curve_axis.fill_between(x, mean - std, mean + std, color=COLOURS[strategy], alpha=0.15)
    curve_axis.set(xlabel="labelled slices", ylabel="LesionDSC on held-out slices",
                   title=f"{len(settings['fold_subset'])} fold(s) x {len(settings['seeds'])} seed(s), "
                         f"{settings['steps']} steps/round (band: std)")
    curve_axis.legend(fontsize=8)
    for strategy, points in summary["gain_over_random"].items():
        if not points:
            continue
        x = [p["n_labelled"] for p in points]
        mean = np.array([p["LesionDSC"]["mean"] for p in points])
        low = np.array([(p["LesionDSC"]["ci95"] or [np.nan])[0] for p in points])
        high = np.array([(p["LesionDSC"]["ci95"] or [np.nan, np.nan])[1] for p in points])
        gain_axis.plot(x, mean, marker="o", label=strategy, color=COLOURS[strategy])
        gain_axis.fill_between(x, low, high, color=COLOURS[strategy], alpha=0.15)
    gain_axis.axhline(0, color="k", lw=0.8)
    gain_axis.set(xlabel="labelled slices", ylabel="LesionDSC - random's (paired)", title="gain over random (95% CI)")
    gain_axis.legend(fontsize=8)
    fig.tight_layout()
    with replacing(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


if __name__ == "__main__":
    main()

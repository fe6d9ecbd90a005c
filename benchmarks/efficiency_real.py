"""Annotation efficiency on real slices: the 50 doctor-labelled COVID-SemiSeg training slices (Inf-Net), infection.

5-fold cross-validation of the 50 slices (each fold: 40 training slices, 10 test slices), with 5, 10, 25 and all 40
of a fold's training slices labelled (each slice is one case, so the budget is `--cases`), several seeds, for the
supervised 2D U-Net and for mean teacher with the unlabelled pool (the fold's training slices left unlabelled plus
the 1600 unlabelled COVID-SemiSeg slices, as Semi-Inf-Net used them). Runs `python -m covlight.efficiency`, which
keeps one run folder (metrics.csv) per point x fold x seed and skips finished runs, so the study is resumable:
stop it at any time and run the same command again. At the end it writes the report (<work>/study/report/) and
benchmarks/results/efficiency_real.json (+ .png) with every point, and `complete: false` while runs are missing.

    python benchmarks/efficiency_real.py --shared ../shared/data --work benchmarks/.efficiency_real
    python benchmarks/efficiency_real.py --shared ../shared/data --work /tmp/eff_tiny --tiny   # a 2-minute check

Settings: those of benchmarks/slices_study.py's `narrow_resize` arm, so that the curve's last point is that study's
arm: slices resized to 256 x 256, the default 2D U-Net at half width (features 16..256, 6 stages), batch 8,
`--epochs` epochs of 25 batches (default 12: 300 steps), 1 loader worker (`--size 128` resizes to 128 x 128
instead: a quarter of the CPU time per step, so a whole curve fits a working day on 2 cores); test on each fold's
10 held-out slices (LesionDSC, NSD-3mm at spacing 1: pixels). `--tiny` runs a few steps at 64 x 64 on one fold, one seed, 5 labelled slices, one method (the
results go to the JSON only when --out says so).
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine_info  # noqa: E402

from covlight.efficiency import main as efficiency  # noqa: E402
from covlight.prepare import main as prepare  # noqa: E402
from covlight.report.collect import collect  # noqa: E402
from covlight.report.efficiency import interval, method_of  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
LABELLED, POOL = "covid_semiseg_train", "covid_semiseg_unlabelled"


def import_slices(shared: Path, data: Path) -> None:
    """Import the labelled and the unlabelled slices (a rerun skips what is imported)."""
    labelled = shared / "covid_semiseg_train" / "TrainingSet" / "LungInfection-Train" / "Doctor-label"
    common = ["--dest", str(data), "--intensity", "8bit", "--licence", "non-commercial research (Inf-Net README)"]
    if prepare(["folder", "--src", str(labelled), "--name", LABELLED, "--images", "Imgs/*.jpg", "--labels",
                "GT/*.png", "--label-map", "255:3", *common]) != 0:
        raise SystemExit("importing the labelled slices failed")
    if prepare(["folder", "--src", str(shared / "covid_semiseg_unlabelled"), "--name", POOL, "--images",
                "Imgs/*.jpg", "--labels", "none", *common]) != 0:
        raise SystemExit("importing the unlabelled slices failed")


def settings(args) -> tuple[list[str], list[str]]:
    """(covlight.efficiency options, covlight overrides)."""
    size = 64 if args.tiny else args.size
    overrides = [
        "task=custom", f"task.name={LABELLED}", "task.num_folds=5", "subtask=infection", "model=unet2d",
        f"paths.data_dir={args.work / 'data'}", "logger=csv", "data.slices.policy=resize",
        f"data.slices.size=[{size},{size}]", f"model.patch_size=[{size},{size},1]", "model.batch_size=8",
        "model.module.net.features_per_stage=[16,32,64,128,256,256]",
        f"trainer.max_epochs={2 if args.tiny else args.epochs}",
        f"data.sampling.batches_per_epoch={2 if args.tiny else 25}", "data.validation.patches=20",
        f"data.sampling.num_workers={0 if args.tiny else 1}", "callbacks.case_scoring.overlay_cases=0",
    ]
    mean_teacher = f"mean_teacher data.unlabelled.datasets=[{POOL}]"
    if args.tiny:
        options = ["--cases", "5", "--folds", "0", "--seeds", "0", "--method", "supervised"]
    else:
        methods = {"supervised": "supervised", "mean_teacher": mean_teacher}
        options = ["--cases", "5,10,25,all", "--folds", args.folds, "--seeds", args.seeds]
        for method in args.methods.split(","):
            options += ["--method", methods[method]]
    return options, overrides


def _methods(text: str) -> str:
    unknown = set(text.split(",")) - {"supervised", "mean_teacher"}
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown method(s) {sorted(unknown)}: give supervised, mean_teacher or both")
    return text


def _budget_order(labelled: str) -> int:
    return 10**9 if labelled == "all" else int(labelled)


def pool_gain(per_run: list[dict]) -> list[dict]:
    """Per budget: mean teacher's LesionDSC minus the supervised run's of the same fold and seed, mean and 95%
    t-interval over those pairs (none from one pair)."""
    score = {(r["method"], r["labelled_slices"], r["fold"], r["seed"]): r["LesionDSC"] for r in per_run}
    gains = []
    for budget in sorted({r["labelled_slices"] for r in per_run}, key=_budget_order):
        pairs = [(value, score[("unet2d", budget, fold, seed)])
                 for (method, labelled, fold, seed), value in score.items()
                 if method == "mean_teacher_2d" and labelled == budget and ("unet2d", budget, fold, seed) in score]
        if pairs:
            mean, low, high = interval([ours - theirs for ours, theirs in pairs])
            gains.append({"labelled_slices": budget, "pairs": len(pairs), "LesionDSC_difference": round(mean, 4),
                          "ci95": None if len(pairs) < 2 else [round(low, 4), round(high, 4)]})
    return gains


def _number(cell: str) -> float | None:
    return None if cell == "" else float(cell)


def summarise(study: Path, out: Path | None, args, exit_status: int) -> dict:
    with open(study / "report" / "efficiency.csv") as handle:
        rows = [row for row in csv.DictReader(handle) if row["line"] == "labelled cases"]
    runs = [run for run in collect([study / "runs"]).runs]
    per_run = sorted(({"method": method_of(run.name), "labelled_slices": run.name.split("-budget-c")[1].split("-")[0],
                       "fold": run.fold, "seed": run.seed,
                       **{column: round(float(np.nanmean([case[column] for case in run.cases])), 4)
                          for column in ("LesionDSC", "LesionNSD-3mm")}} for run in runs),
                     key=lambda r: (r["method"], _budget_order(r["labelled_slices"]), r["fold"], r["seed"]))
    result = {
        "what": __doc__.split("\n\n")[0], "settings": settings(args), "machine": machine_info(),
        "folds": args.folds, "seeds": args.seeds, "size": args.size,
        "complete": exit_status == 0,  # every run this command asked for finished (those folds and seeds only)
        "runs_found": len(runs), "per_run": per_run, "pool_gain": pool_gain(per_run),
        "points": [{"method": r["method"], "labelled_slices": r["labelled_cases"],
                    "annotated_slices": float(r["annotated_slices"]), "structure": r["structure"],
                    "metric": r["metric"], "mean": float(r["mean"]),
                    "ci95": [_number(r["ci95_low"]), _number(r["ci95_high"])],  # none from a single run
                    "runs": int(r["runs"])} for r in rows],
    }
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
        shutil.copyfile(study / "report" / "efficiency.png", out.with_suffix(".png"))
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", type=Path, default=Path("../shared/data"), help="the shared data folder")
    parser.add_argument("--work", type=Path, required=True, help="imported data, runs and report (kept to resume)")
    parser.add_argument("--folds", default="0,1,2,3,4", help="e.g. 0,1 first: every point on two folds")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--methods", default="supervised,mean_teacher",
                        type=_methods, help="supervised, mean_teacher or both")
    parser.add_argument("--epochs", type=int, default=12, help="epochs of 25 batches (12: slices_study's 300 steps)")
    parser.add_argument("--size", type=int, default=256,
                        help="slices are resized to SIZE x SIZE (256: slices_study's; 128: a quarter of the CPU time)")
    parser.add_argument("--tiny", action="store_true", help="a quick check of the whole pipeline")
    parser.add_argument("--out", type=Path, help="the JSON to write (default: benchmarks/results/efficiency_real.json; "
                                                 "none with --tiny)")
    args = parser.parse_args(argv)
    args.work = args.work.resolve()
    import_slices(args.shared, args.work / "data")
    options, overrides = settings(args)
    status = efficiency(["--out", str(args.work / "study"), *options, *overrides])
    out = args.out or (None if args.tiny else RESULTS / "efficiency_real.json")
    result = summarise(args.work / "study", out, args, status)
    for point in result["points"]:
        if point["metric"] == "dsc":
            low, high = point["ci95"]
            spread = "" if low is None else f" [{100 * low:.1f}, {100 * high:.1f}]"
            print(f"{point['method']:>18} {point['labelled_slices']:>4} labelled slices: LesionDSC "
                  f"{100 * point['mean']:.1f}{spread} ({point['runs']} runs)")
    return status


if __name__ == "__main__":
    sys.exit(main())

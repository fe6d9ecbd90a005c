"""`python -m covlight.convert nnunet-v1 MODEL_FOLDER --out RUN_FOLDER --task TASK [--source S] ...`

Reads one fold of an nnU-Net v1 trained model (`<network>/<TaskXXX>/<trainer>__<plans>/fold_<k>`, with
`model_final_checkpoint.model`, its `.pkl`, and `plans.pkl` beside the folds; e.g. a baseline of the benchmark's
Zenodo records) and writes a finished covlight run folder that `covlight.predict`, `init_from=` and
`--config-dir RUN/recipes experiment=nnunet_v1` (testing, fine-tuning) accept like any run. Pickles are read
without running code (covlight/convert/unpickling.py). Exit status 0, or 2 with one line naming the file and the fix.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from covlight.benchmark import SOURCES, TASKS
from covlight.errors import CovlightError, report_error

PROG = "python -m covlight.convert"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=PROG, description="Convert a model trained by another tool to a covlight "
                                                            "run folder.")
    formats = parser.add_subparsers(dest="format", required=True)
    v1 = formats.add_parser("nnunet-v1", help="an nnU-Net v1 trained model (nnUNetTrainerV2, Generic_UNet)")
    v1.add_argument("model", type=Path, help="the model's fold folder (…/<trainer>__<plans>/fold_<k>), or the "
                                             "folder above it when it holds one fold")
    v1.add_argument("--out", type=Path, required=True, help="the run folder to write (new or empty)")
    v1.add_argument("--task", choices=TASKS, required=True, help="the benchmark task the model was trained for "
                                                                 "(part of the run's identity)")
    v1.add_argument("--source", choices=SOURCES, help="task2/task3: the non-COVID source it was trained on")
    v1.add_argument("--orientation", required=True,
                    help="orientation of the model's training images (v1 never records it): axis codes as nibabel "
                         "prints them (nib.aff2axcodes), e.g. LPS, or one training image to read them from. A wrong "
                         "value swaps left and right")
    v1.add_argument("--dataset-json", type=Path,
                    help="the task's dataset.json (class names); default: dataset.json beside plans.pkl or above")
    v1.add_argument("--labels", help="the classes by hand instead: 1=left_lung,2=right_lung,3=infection")
    args = parser.parse_args(argv)
    if (args.task == "task1") == bool(args.source):
        parser.error("--source goes with task2 and task3 (the non-COVID source), not with task1")
    return args


def default_dataset_json(model: Path) -> Path | None:
    """dataset.json beside plans.pkl or in a folder above the model (where a user may have copied it)."""
    from covlight.convert.nnunet_v1 import find_fold

    for folder in find_fold(model).resolve().parents:
        if (folder / "dataset.json").is_file():
            return folder / "dataset.json"
    return None


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        from covlight.convert.nnunet_v1 import orientation_codes, parse_labels
        from covlight.convert.runs import EXPERIMENT, RECIPES, write_run

        codes = orientation_codes(args.orientation)
        labels = parse_labels(args.labels) if args.labels else None
        dataset_json = args.dataset_json or (None if labels else default_dataset_json(args.model))
        out = write_run(args.model, args.out, args.task, args.source, codes, dataset_json, labels)
    except CovlightError as error:
        return report_error(PROG, error)
    print(f"wrote {out}: predict with python -m covlight.predict --run {out} --input ... --output ...; test or "
          f"fine-tune with python -m covlight --config-dir {out / RECIPES} experiment={EXPERIMENT} ...")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

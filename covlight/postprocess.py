"""Post-processing of predicted label maps: the largest connected component, and nnU-Net's rule for choosing it.

`largest_component(labels, values)` keeps, for each label value, only its largest connected component (voxels of
the others become background), with nnU-Net v1's connectivity: `scipy.ndimage.label`'s default, faces only (6
neighbours in 3D, 4 in 2D); components tied for the largest all stay, as in v1.

`python -m covlight.postprocess --run RUN --pred DIR --gt DIR [--cases ...]` chooses, per structure, whether to
apply it, as nnU-Net does: only when it does not lower the mean DSC over validation cases. The cases are never
test cases of the run's split (the split of its task, subtask, fold, source: `covlight.splits`): tasks 2 and 3 use
their sources' in-domain held-out lists by default; task 1's official validation lists are its test cases, so a
task 1 run needs `--cases` from an inner split of its training cases. The decision is written to
`RUN/postprocessing.json` (never over an existing one without --force), which `covlight.predict --postprocess
RUN/postprocessing.json` applies; `--postprocess largest_component[:structure,...]` applies the rule unchosen.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from scipy import ndimage

from covlight.atomic import write_json
from covlight.benchmark import LABELS, STRUCTURES, SUBTASKS
from covlight.config import read_status
from covlight.errors import ConfigError, CovlightError, DatasetError, report_error

RULE = "largest_component"
DECISION_FILE = "postprocessing.json"
LUNGS = ("left_lung", "right_lung")


def largest_component(labels: np.ndarray, values: Iterable[int]) -> np.ndarray:
    """A copy of `labels` where each of `values` keeps only its largest face-connected component."""
    labels = labels.copy()
    for value in values:
        mask = labels == value
        components, count = ndimage.label(mask)
        if count <= 1:
            continue
        sizes = np.bincount(components.ravel())
        sizes[0] = 0
        labels[mask & (sizes != sizes.max())[components]] = LABELS["background"]
    return labels


def parse_spec(spec: str, predicted: Iterable[str]) -> list[str]:
    """The structures `--postprocess` post-processes: `largest_component` (each lung the model predicts),
    `largest_component:left_lung,infection`, or a postprocessing.json chosen by the rule."""
    predicted = list(predicted)
    path = Path(spec)
    if spec.endswith(".json"):
        if not path.is_file():
            raise ConfigError(f"--postprocess {spec}: no such file; give a {DECISION_FILE} written by "
                              "python -m covlight.postprocess, or largest_component[:structure,...]")
        try:
            structures = list(json.loads(path.read_text(encoding="utf-8"))["apply"])
        except (ValueError, KeyError, TypeError):
            raise ConfigError(f"{path}: not a {DECISION_FILE} of covlight.postprocess (no 'apply' list)") from None
    else:
        rule, _, names = spec.partition(":")
        if rule != RULE:
            raise ConfigError(f"--postprocess {spec}: use {RULE}, {RULE}:<structure>,... or a {DECISION_FILE}")
        structures = [n.strip() for n in names.split(",") if n.strip()] if names else \
            [s for s in LUNGS if s in predicted]
    unknown = [s for s in structures if s not in predicted]
    if unknown:
        raise ConfigError(f"--postprocess {spec}: {unknown} not predicted by this model (it predicts {predicted})")
    return structures


# ----------------------------------------------------------------------------------------- the decision rule
def validation_cases(run: Path, given: list[str] | None) -> list[str]:
    """The cases the rule may look at: never a test case of the run's split."""
    from covlight.splits import official_split

    identity = read_status(run).get("identity")
    if read_status(run).get("state") != "finished" or not identity:
        raise ConfigError(f"{run} is not a finished run (its status.json); choose post-processing for a finished run")
    split = official_split(identity["task"], identity["subtask"], identity.get("fold"), identity.get("source"),
                           identity.get("variant") or "official")
    test = {case for cases in split.test.values() for case in cases}
    if given:
        chosen = [c for c in given if c in test]
        if chosen:
            raise ConfigError(f"--cases {chosen[:3]}: test cases of {run}'s split; post-processing is chosen on "
                              "validation cases only (an inner split of the training cases for task 1)")
        return list(given)
    if identity["task"] == "task1":
        raise ConfigError("task 1's official validation lists are its test cases: give --cases, an inner split of "
                          f"{run}'s training cases, predicted by a model that did not train on them")
    return [case for cases in split.val.values() for case in cases if case not in test]


def choose(pred: Path, gt: Path, cases: list[str], structures: list[str]) -> dict:
    """Mean DSC of each structure over `cases` before and after the rule; applied where it is not lower."""
    from covlight.metrics.overlap import dice

    labels_dir = gt / "labels" if (gt / "labels").is_dir() else gt
    scores = {s: {"before": [], "after": []} for s in structures}
    for case in cases:
        files = [(pred / f"{case}.nii.gz", "prediction"), (labels_dir / f"{case}.nii.gz", "ground truth")]
        for path, what in files:
            if not path.is_file():
                raise DatasetError(f"{path}: no {what} of validation case {case}; predict the validation cases "
                                   "first (python -m covlight.predict), or give --cases")
        import nibabel as nib

        predicted = np.asarray(nib.load(files[0][0]).dataobj).astype(np.uint8)
        truth = np.asarray(nib.load(files[1][0]).dataobj).astype(np.uint8)
        values = [STRUCTURES[s].label for s in structures]
        processed = largest_component(predicted, values)
        for structure, value in zip(structures, values, strict=True):
            if not (truth == value).any() and not (predicted == value).any():
                continue  # DSC of two empty masks: NaN, left out as the report leaves it out
            scores[structure]["before"].append(dice(predicted == value, truth == value))
            scores[structure]["after"].append(dice(processed == value, truth == value))
    decision = {"rule": RULE, "cases": cases, "structures": {}, "apply": []}
    for structure, lists in scores.items():
        before = float(np.mean(lists["before"])) if lists["before"] else float("nan")
        after = float(np.mean(lists["after"])) if lists["after"] else float("nan")
        apply = bool(lists["before"]) and after >= before
        decision["structures"][structure] = {"mean_dsc_before": before, "mean_dsc_after": after, "apply": apply,
                                             "cases": len(lists["before"])}
        if apply:
            decision["apply"].append(structure)
    return decision


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m covlight.postprocess",
                                     description="Choose the largest-component post-processing on validation cases.")
    parser.add_argument("--run", type=Path, required=True, help="the finished run whose predictions these are")
    parser.add_argument("--pred", type=Path, required=True, help="its predictions of the validation cases")
    parser.add_argument("--gt", type=Path, required=True, help="their truth: a canonical dataset folder or labels")
    parser.add_argument("--cases", nargs="+", help="validation case ids (task 1: required, an inner split)")
    parser.add_argument("--structures", nargs="+", choices=list(STRUCTURES),
                        help="structures to decide for (default: each lung and infection the run predicts)")
    parser.add_argument("--force", action="store_true", help=f"replace an existing RUN/{DECISION_FILE}")
    args = parser.parse_args(argv)
    out = args.run / DECISION_FILE
    try:
        if out.exists() and not args.force:
            raise ConfigError(f"{out} exists; it is replaced only with --force")
        cases = validation_cases(args.run, args.cases)
        subtask = read_status(args.run)["identity"]["subtask"]
        structures = args.structures or list(SUBTASKS[subtask].structures)
        decision = choose(args.pred, args.gt, cases, structures)
    except CovlightError as error:
        return report_error("covlight.postprocess", error)
    write_json(out, decision)
    for structure, result in decision["structures"].items():
        print(f"{structure}: mean DSC {result['mean_dsc_before']:.4f} -> {result['mean_dsc_after']:.4f} over "
              f"{result['cases']} validation case(s): {'apply' if result['apply'] else 'leave'}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The classic lung pipeline and the seeded methods on the real samples in ../shared/data.

- cip_chest_ct64 (one real chest CT in HU, automatic lung labels): the classic pipeline, and the random walker and
  the graph cut from 3 seed slices; lungs.
- covid_ctseg_png256_case01 (159 consecutive slices of one COVID-19-CT-Seg case, CLAHE-enhanced 8-bit, lungs and
  infection): imported as 159 one-slice cases, stacked here back into one volume (spacing 1 mm, unknown); the
  random walker, the active contours and the graph cut from 1, 3 and 5 seed slices, for lungs and for infection.

Both are imported with the README's `covlight.prepare folder` commands into a temporary folder. Each method runs
as its conf/method/<name>.yaml configures it (the same class and knobs as `method=<name>`); the graph cut, left
out of covlight as redundant with the random walker, as benchmarks/graph_cut.py sets it. Seeds come from
covlight.data.interaction (full slices, seed 0). Each row holds the scores without the seed slices (as metrics.csv)
and with them (`with_seed_slices`, as metrics_with_seed_slices.csv).

Resumable: each row is written to --out as soon as it is measured; a rerun with the same --out keeps the rows that
exist and measures only the others. `"complete": true` only when every row exists. An --out measured with other
method settings is refused (remove it, or give another --out).

    nice -n 5 python benchmarks/semiauto_real.py --shared ../shared/data --out benchmarks/results/semiauto_real.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import graph_cut  # noqa: E402
from benchmarks.common import log, machine_info  # noqa: E402
from covlight.atomic import write_json  # noqa: E402
from covlight.benchmark import LABELS  # noqa: E402
from covlight.data.canonical import HU_WINDOW, affine_from_spacing, read_dataset, read_nifti, save_nifti  # noqa: E402
from covlight.data.interaction import SeedingStep  # noqa: E402
from covlight.data.options import Interaction  # noqa: E402
from covlight.methods import semiauto  # noqa: E402
from covlight.metrics import score_case  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SUBTASKS = {"lung": ([0, 1, 2], ["left_lung", "right_lung"]), "infection": ([0, 3], ["infection"])}
CIP, COVID_PNG = "cip_chest_ct64", "covid_ctseg_png256_case01"
# The rows: (dataset, subtask, method, seed slices); k = 0 for the automatic classic pipeline. In the order they are
# measured: the fast ones first, and k = 3 before 1 and 5 (a run stopped for time leaves the most telling rows).
ROWS = [(CIP, "lung", "classic_lung", 0), (CIP, "lung", "random_walker", 3), (CIP, "lung", "graph_cut", 3)] + [
    (COVID_PNG, subtask, method, k) for method in ("graph_cut", "random_walker", "active_contour")
    for k in (3, 1, 5) for subtask in SUBTASKS]
IMPORTS = {
    CIP: ["--src", "{shared}/cip_chest_ct64/original", "--images", "ct-*.nrrd", "--labels", "lm-*.nrrd",
          "--cip-regions", "--intensity", "hu", "--licence", "CIP licence (BSD-style)"],
    COVID_PNG: ["--src", "{shared}/covid_ctseg_png256_case01", "--images", "ct/*.png", "--labels", "lungs/*.png",
                "--label-map", "255:1", "--labels", "infection/*.png", "--label-map", "255:3", "--split-lungs",
                "--intensity", "8bit"],
}


def settings(method: str) -> dict:
    """The method's class and knobs, as conf/method/<method>.yaml gives them to `method=<method>` (the graph cut,
    left out of covlight: benchmarks/graph_cut.py)."""
    if method == "graph_cut":
        return dict(graph_cut.SETTINGS)
    module = yaml.safe_load((REPO / "conf" / "method" / f"{method}.yaml").read_text(encoding="utf-8"))["model"]["module"]
    return dict(module)


def make_method(method: str, subtask: str):
    knobs = settings(method)
    module, name = knobs.pop("_target_").rsplit(".", 1)
    cls = getattr(graph_cut if module == "benchmarks.graph_cut" else semiauto, name)
    return cls(SUBTASKS[subtask][0], subtask, **knobs)


def prepare(name: str, shared: Path, dest: Path) -> Path:
    arguments = [a.format(shared=shared) for a in IMPORTS[name]]
    command = [sys.executable, "-m", "covlight.prepare", "folder", "--name", name, *arguments, "--dest", str(dest)]
    subprocess.run(command, check=True, capture_output=True)
    return dest / name


def load(name: str, root: Path, work: Path) -> tuple[np.ndarray, np.ndarray, Path, np.ndarray, tuple]:
    """(stored image 0..255, truth, label file, affine, annotated structures) of the sample as one volume: the CIP
    case as imported, the PNG slices stacked in case-id order (spacing 1 mm)."""
    dataset = read_dataset(root)
    ids = sorted(dataset.cases)
    if name == CIP:
        (case_id,) = ids
        image, image_file = read_nifti(dataset.image_path(case_id))
        return (np.asarray(image, np.float32), np.asarray(read_nifti(dataset.label_path(case_id))[0], np.uint8),
                dataset.label_path(case_id), image_file.affine, tuple(dataset.annotated))
    image = np.concatenate([np.asarray(read_nifti(dataset.image_path(c))[0], np.float32) for c in ids], axis=2)
    truth = np.concatenate([np.asarray(read_nifti(dataset.label_path(c))[0], np.uint8) for c in ids], axis=2)
    affine = affine_from_spacing((1.0, 1.0, 1.0))
    save_nifti(work / "stack_label.nii.gz", truth, affine)
    return image, truth, work / "stack_label.nii.gz", affine, tuple(dataset.annotated)


def measure(name: str, subtask: str, method: str, k: int, sample) -> dict:
    stored, truth, label_path, affine, annotated = sample
    values, structures = SUBTASKS[subtask]
    truth = np.where(np.isin(truth, values), truth, LABELS["background"]).astype(np.uint8)
    spacing = semiauto.spacing_of(affine)
    slices: tuple[int, ...] = ()
    start = time.perf_counter()
    if method == "classic_lung":
        knobs = settings(method)
        hu = HU_WINDOW[0] + stored * (HU_WINDOW[1] - HU_WINDOW[0]) / 255.0
        labels = semiauto.classic_lung_labels(hu, affine, knobs["threshold_hu"], knobs["second_lung_share"])
    else:
        seeds = SeedingStep(Interaction(k, "slices", 0), values)(name, "stack", label_path, annotated)
        start, slices = time.perf_counter(), seeds.slices
        classes = make_method(method, subtask).segment(stored, affine, {"seeds": seeds})
        labels = np.asarray(values, np.uint8)[classes]
    seconds = time.perf_counter() - start
    kept = [z for z in range(truth.shape[2]) if z not in set(slices)]
    without = score_case(labels[:, :, kept], truth[:, :, kept], spacing, structures)
    whole = score_case(labels, truth, spacing, structures)
    return {"dataset": name, "subtask": subtask, "method": method, "k": k, "seed_slices": list(slices),
            "seconds": round(seconds, 1), **{c: round(float(v), 4) for c, v in without.items()},
            "with_seed_slices": {c: round(float(v), 4) for c, v in whole.items()}}


def key(row) -> tuple:
    return row["dataset"], row["subtask"], row["method"], row["k"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", default="../shared/data", help="the folder holding the real samples")
    parser.add_argument("--out", required=True, help="JSON file of the results (kept and continued if it exists)")
    args = parser.parse_args()
    import skimage

    out = Path(args.out)
    methods = {method: settings(method) for _, _, method, _ in ROWS}
    report = {"benchmark": "semiauto_real", "complete": False, "settings": methods,
              "scores": "seed slices left out (as metrics.csv); with_seed_slices: the whole volume", "results": []}
    if out.exists():
        report = json.loads(out.read_text(encoding="utf-8"))
        if report.get("settings") != methods:
            sys.exit(f"semiauto_real: error: {out} was measured with other method settings than conf/method/ holds "
                     "now; remove it (or give another --out) to measure again")
    report.setdefault("machines", []).append(machine_info(scikit_image=skimage.__version__))  # one per run
    done = {key(row) for row in report["results"]}
    shared = Path(args.shared).resolve()
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        samples = {}
        for row in ROWS:
            if row in done:
                continue
            name = row[0]
            if name not in samples:
                log(f"importing {name} ...")
                samples[name] = load(name, prepare(name, shared, work / "data"), work)
            log(f"{' '.join(map(str, row))} ...")
            report["results"].append(measure(*row, samples[name]) | {"run": len(report["machines"])})
            report["complete"] = {key(r) for r in report["results"]} >= set(ROWS)
            write_json(out, report)
            log(json.dumps(report["results"][-1]))
    report["complete"] = {key(r) for r in report["results"]} >= set(ROWS)
    write_json(out, report)
    log(f"{out}: {len(report['results'])} of {len(ROWS)} rows; complete: {report['complete']}")


if __name__ == "__main__":
    main()

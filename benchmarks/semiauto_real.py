"""The classic lung pipeline and the seeded methods on the real samples in ../shared/data.

- cip_chest_ct64 (one real chest CT in HU, automatic lung labels): the classic pipeline, and the random walker
  from 3 seed slices; lungs.
- covid_ctseg_png256_case01 (159 consecutive slices of one COVID-19-CT-Seg case, CLAHE-enhanced 8-bit, lungs and
  infection): imported as 159 one-slice cases, stacked here back into one volume (spacing 1 mm, unknown); the
  random walker and the active contours from 1, 3 and 5 seed slices, for lungs and for infection.

Both are imported with the README's `covlight.prepare folder` commands into a temporary folder. Seeds come from
covlight.data.interaction (full slices, seed 0); DSC and NSD leave the seed slices out, as metrics.csv does.

    python benchmarks/semiauto_real.py --shared ../shared/data --out benchmarks/results/semiauto_real.json
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import emit, log, machine_info  # noqa: E402
from covlight.benchmark import LABELS  # noqa: E402
from covlight.data.canonical import HU_WINDOW, affine_from_spacing, read_dataset, read_nifti, save_nifti  # noqa: E402
from covlight.data.interaction import SeedingStep  # noqa: E402
from covlight.data.options import Interaction  # noqa: E402
from covlight.methods.semiauto import (  # noqa: E402
    active_contour_classes,
    classic_lung_labels,
    random_walker_classes,
)
from covlight.metrics import score_case  # noqa: E402

SUBTASKS = {"lung": ([0, 1, 2], ["left_lung", "right_lung"]), "infection": ([0, 3], ["infection"])}
IMPORTS = {
    "cip_chest_ct64": ["--src", "{shared}/cip_chest_ct64/original", "--images", "ct-*.nrrd", "--labels", "lm-*.nrrd",
                       "--cip-regions", "--intensity", "hu", "--licence", "CIP licence (BSD-style)"],
    "covid_ctseg_png256_case01": ["--src", "{shared}/covid_ctseg_png256_case01", "--images", "ct/*.png",
                                  "--labels", "lungs/*.png", "--label-map", "255:1", "--labels", "infection/*.png",
                                  "--label-map", "255:3", "--split-lungs", "--intensity", "8bit"],
}


def prepare(name: str, shared: Path, dest: Path) -> Path:
    arguments = [a.format(shared=shared) for a in IMPORTS[name]]
    command = [sys.executable, "-m", "covlight.prepare", "folder", "--name", name, *arguments, "--dest", str(dest)]
    subprocess.run(command, check=True, capture_output=True)
    return dest / name


def scored(method: str, labels: np.ndarray, truth: np.ndarray, spacing, structures, slices=(), seconds=0.0,
           **extra) -> dict:
    kept = [z for z in range(truth.shape[2]) if z not in set(slices)]
    scores = score_case(labels[:, :, kept], truth[:, :, kept], spacing, structures)
    return {"method": method, **extra, "seed_slices": list(slices), "seconds": round(seconds, 1),
            **{k: round(float(v), 4) for k, v in scores.items()}}


def run_cip(root: Path) -> list[dict]:
    dataset = read_dataset(root)
    (case_id,) = dataset.cases
    image, image_file = read_nifti(dataset.image_path(case_id))
    truth = np.asarray(read_nifti(dataset.label_path(case_id))[0], np.uint8)
    affine = image_file.affine
    spacing = tuple(float(s) for s in image_file.header.get_zooms()[:3])
    stored = np.asarray(image, np.float32)
    rows = []
    start = time.perf_counter()
    hu = HU_WINDOW[0] + stored * (HU_WINDOW[1] - HU_WINDOW[0]) / 255.0
    labels = classic_lung_labels(hu, affine)
    rows.append(scored("classic_lung", labels, truth, spacing, SUBTASKS["lung"][1],
                       seconds=time.perf_counter() - start, dataset=root.name, subtask="lung"))
    seeds = SeedingStep(Interaction(3, "slices", 0), [0, 1, 2])(root.name, case_id, dataset.label_path(case_id),
                                                                  tuple(dataset.annotated))
    start = time.perf_counter()
    classes = random_walker_classes(stored / 255.0, seeds.markers, affine)
    rows.append(scored("random_walker", np.asarray([0, 1, 2], np.uint8)[classes], truth, spacing,
                       SUBTASKS["lung"][1], seeds.slices, time.perf_counter() - start, dataset=root.name,
                       subtask="lung", k=3))
    return rows


def stack(root: Path, work: Path) -> tuple[np.ndarray, Path, np.ndarray]:
    """The one-slice cases in case-id order as one volume: (image 0..255, label file, affine)."""
    dataset = read_dataset(root)
    ids = sorted(dataset.cases)
    image = np.concatenate([np.asarray(read_nifti(dataset.image_path(c))[0], np.float32) for c in ids], axis=2)
    label = np.concatenate([np.asarray(read_nifti(dataset.label_path(c))[0], np.uint8) for c in ids], axis=2)
    affine = affine_from_spacing((1.0, 1.0, 1.0))
    save_nifti(work / "stack_label.nii.gz", label, affine)
    return image, work / "stack_label.nii.gz", affine


def run_covid(root: Path, work: Path) -> list[dict]:
    image, label_path, affine = stack(root, work)
    truth = np.asarray(read_nifti(label_path)[0], np.uint8)
    rows = []
    for subtask, (values, structures) in SUBTASKS.items():
        subtask_truth = np.where(np.isin(truth, values), truth, LABELS["background"]).astype(np.uint8)
        for k in (1, 3, 5):
            seeds = SeedingStep(Interaction(k, "slices", 0), values)(root.name, "stack", label_path,
                                                                      ("left_lung", "right_lung", "infection"))
            for method, function in (("random_walker", random_walker_classes),
                                     ("active_contour", active_contour_classes)):
                start = time.perf_counter()
                classes = function(image / 255.0, seeds.markers, affine)
                labels = np.asarray(values, np.uint8)[classes]
                rows.append(scored(method, labels, subtask_truth, (1.0, 1.0, 1.0), structures, seeds.slices,
                                   time.perf_counter() - start, dataset=root.name, subtask=subtask, k=k))
                log(str(rows[-1]))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", default="../shared/data", help="the folder holding the real samples")
    parser.add_argument("--out", help="JSON file for the results")
    args = parser.parse_args()
    import skimage

    shared = Path(args.shared).resolve()
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        log("cip_chest_ct64 ...")
        rows = run_cip(prepare("cip_chest_ct64", shared, work / "data"))
        log(str(rows))
        log("covid_ctseg_png256_case01 ...")
        rows += run_covid(prepare("covid_ctseg_png256_case01", shared, work / "data"), work)
    emit({"benchmark": "semiauto_real", "machine": machine_info(scikit_image=skimage.__version__),
          "scores": "seed slices left out", "results": rows}, args.out)


if __name__ == "__main__":
    main()

"""StructSeg 2019 (structseg2019.grand-challenge.org): Task 3 Thoracic_OAR (lungs) and Task 4 Lung_GTV (tumour).

--src holds `Thoracic_OAR/` and/or `Lung_GTV/` (folders or zips), each with one folder per case `<n>/` holding
`data.nii.gz` (CT, HU) and `label.nii.gz`. Case `<n>` becomes `train_<n>`, the id of the official split files.

Label codes. Thoracic_OAR: 1 left lung, 2 right lung, 3 heart, 4 esophagus, 5 trachea, 6 spinal cord (the
challenge's order, as nnU-Net's StructSeg conversion lists it); the lungs are kept, the other organs become
background, and the sides are checked against the anatomy (another listing has the lungs the other way round,
so a swap would stop the import). Lung_GTV: 1 gross tumour volume -> 3.
"""

from __future__ import annotations

import re

from covlight.benchmark import SOURCE_SPLITS, SUBTASKS
from covlight.data.importers.archives import SourceTree, find_component
from covlight.data.importers.cases import finish_case
from covlight.data.importers.checks import LabelMap, integer_values
from covlight.data.importers.runner import CaseSpec, DatasetPlan
from covlight.data.importers.volumes import Volume, read_volume, same_grid
from covlight.errors import DatasetError
from covlight.splits import load_split_file

NAME = "structseg"
HELP = "StructSeg 2019: Thoracic_OAR -> structseg_lung, Lung_GTV -> structseg_gtv"
CASE_FILE = re.compile(r"(?:^|/)(?P<n>\d+)/(?P<role>data|label)\.nii(?:\.gz)?$")
PARTS = {  # --part -> (folder, label map, subtask); dataset name and split file: benchmark.SOURCE_SPLITS
    "lung": ("thoracic_oar", LabelMap({1: 1, 2: 2, 3: 0, 4: 0, 5: 0, 6: 0}), "lung"),
    "gtv": ("lung_gtv", LabelMap({1: 3}), "infection"),
}
META = {
    "source": "StructSeg 2019 challenge (Automatic Structure Segmentation for Radiotherapy Planning), "
              "https://structseg2019.grand-challenge.org",
    "licence": "held by the challenge organisers; research use under their data terms",
}


def add_arguments(parser) -> None:
    parser.description = __doc__
    parser.add_argument("--part", choices=tuple(PARTS), help="import one part only (default: every part found)")


def plans(args, staging) -> list[DatasetPlan]:
    parts = [args.part] if args.part else list(PARTS)
    found = {part: find_component(args.src, PARTS[part][0], exact=False) for part in parts}
    if not any(found.values()):
        names = " or ".join(f"{PARTS[p][0]}/" for p in parts)
        raise DatasetError(f"{args.src}: no {names} found (folders or zips). Pass the folder holding the StructSeg "
                           "2019 downloads as --src.")
    result = []
    for part, path in found.items():
        folder, labels, subtask = PARTS[part]
        split_file, dataset = SOURCE_SPLITS["structseg", subtask]
        annotated = list(SUBTASKS[subtask].structures)
        if path is None:
            continue
        tree = SourceTree(path, staging)
        files: dict[str, dict] = {}
        for match, relpath in tree.match(CASE_FILE):
            files.setdefault(f"train_{int(match['n'])}", {})["image" if match["role"] == "data" else "label"] = \
                tree.ref(relpath)
        lacking = [c for c, f in files.items() if len(f) < 2]
        if lacking:
            raise DatasetError(f"{path}: case folder(s) {lacking[:5]} lack data.nii.gz or label.nii.gz. Extract "
                               "the download completely.")
        cases = [CaseSpec(c, f, _builder(labels)) for c, f in sorted(files.items(), key=lambda i: _number(i[0]))]
        split = load_split_file(split_file)[0]
        meta = {**META, "description": f"StructSeg 2019 {path.name}"}
        result.append(DatasetPlan(dataset, cases, annotated, meta, {"importer": NAME, "part": part},
                                  official=tuple(sorted(split["train"] + split["val"], key=_number))))
    missing = [PARTS[p][0] for p, path in found.items() if path is None]
    if missing:
        result[0].notes.append(f"no {', '.join(missing)} in {args.src}: that part was not imported")
    return result


def _number(case_id: str) -> int:
    return int(case_id.rsplit("_", 1)[1])


def _builder(labels: LabelMap):
    def build(files):
        image = read_volume(files["image"].path, files["image"].name)
        mask = read_volume(files["label"].path, files["label"].name)
        same_grid(image, mask)
        label = labels.apply(integer_values(mask), mask.name, "StructSeg label codes are 0-6 (OAR) or 0-1 (GTV).")
        fix = "StructSeg's Thoracic_OAR codes should be 1 left lung, 2 right lung; check this file's header."
        return finish_case(image, "hu", Volume(label, image.affine, mask.name), fix=fix)

    return build

"""MosMedData COVID19_1110 (mosmed.ai): chest CT studies in HU, 50 of them (CT-1, study_0255..study_0304) with
infection masks.

--src is the COVID19_1110 folder (or its zip): `studies/CT-0..CT-4/study_XXXX.nii.gz` and
`masks/study_XXXX_mask.nii.gz` (1 = ground-glass or consolidation -> 3). The labelled studies become the dataset
`mosmed` (infection only: it has no lung masks). With --unlabelled, the studies without masks of CT-0..CT-4
become `mosmed_unlabelled`, an unlabelled pool; the 50 labelled studies are never in it: they are test cases.
"""

from __future__ import annotations

import re

from covlight.benchmark import MOSMED, MOSMED_CASES
from covlight.data.importers.archives import SourceTree
from covlight.data.importers.cases import finish_case
from covlight.data.importers.checks import LabelMap, integer_values
from covlight.data.importers.runner import CaseSpec, DatasetPlan
from covlight.data.importers.volumes import Volume, read_volume, same_grid
from covlight.errors import DatasetError

NAME = MOSMED
HELP = "MosMedData COVID19_1110: studies/CT-*/study_XXXX.nii.gz + masks/ -> mosmed (or mosmed_unlabelled)"
STUDY = re.compile(r"(?:^|/)studies/CT-(?P<group>[0-4])/(?P<case>study_\d{4})\.nii(?:\.gz)?$")
MASK = re.compile(r"(?:^|/)masks/(?P<case>study_\d{4})_mask\.nii(?:\.gz)?$")
LABELLED = MOSMED_CASES
INFECTION = LabelMap({1: 3})
META = {
    "source": "MosMedData: Chest CT Scans with COVID-19 Related Findings (COVID19_1110), "
              "https://mosmed.ai/datasets/covid19_1110",
    "licence": "CC BY-NC-ND 3.0",
}


def add_arguments(parser) -> None:
    parser.description = __doc__
    parser.add_argument("--unlabelled", action="store_true",
                        help="import the studies without masks (CT-0..CT-4) as mosmed_unlabelled instead")


def plans(args, staging) -> list[DatasetPlan]:
    tree = SourceTree(args.src, staging)
    studies = {m["case"]: (m["group"], path) for m, path in tree.match(STUDY)}
    masks = {m["case"]: path for m, path in tree.match(MASK)}
    if not studies:
        raise DatasetError(f"{args.src}: no studies/CT-*/study_XXXX.nii.gz found. Pass the COVID19_1110 folder "
                           "(or its zip) from https://mosmed.ai/datasets/covid19_1110 as --src.")
    if args.unlabelled:
        pool = [c for c in sorted(studies) if c not in masks and c not in LABELLED]
        cases = [CaseSpec(c, {"image": tree.ref(studies[c][1])}, _build_unlabelled) for c in pool]
        meta = {**META, "description": "studies of CT-0..CT-4 without masks; the 50 labelled CT-1 studies "
                                       "(test cases) are excluded"}
        return [DatasetPlan("mosmed_unlabelled", cases, [], meta, {"importer": NAME, "unlabelled": True})]
    cases = []
    for case_id in sorted(masks):
        if case_id not in studies:
            continue  # reported among the missing official cases
        files = {"image": tree.ref(studies[case_id][1]), "label": tree.ref(masks[case_id])}
        cases.append(CaseSpec(case_id, files, _build))
    unmasked = [c for c in LABELLED if c in studies and c not in masks]
    if unmasked:
        raise DatasetError(f"{args.src}: no mask for {', '.join(unmasked[:5])} (expected "
                           f"masks/{unmasked[0]}_mask.nii.gz). Add the masks folder of the download.")
    meta = {**META, "description": "the 50 labelled CT-1 studies; infection only (no lung masks)"}
    return [DatasetPlan(MOSMED, cases, ["infection"], meta, {"importer": NAME}, official=LABELLED)]


def _build(files):
    image = read_volume(files["image"].path, files["image"].name)
    mask = read_volume(files["label"].path, files["label"].name)
    same_grid(image, mask)
    label = INFECTION.apply(integer_values(mask), mask.name, "MosMed masks hold 0 and 1; use the official mask.")
    return finish_case(image, "hu", Volume(label, image.affine, mask.name))


def _build_unlabelled(files):
    return finish_case(read_volume(files["image"].path, files["image"].name), "hu")

"""COVID-19-CT-Seg (Ma et al., Zenodo 3757476): 20 CT scans with left lung, right lung and infection masks.

--src holds the four Zenodo zips (`COVID-19-CT-Seg_20cases.zip`, `Lung_Mask.zip`, `Infection_Mask.zip`,
`Lung_and_Infection_Mask.zip`) or their extracted folders, with or without a folder inside each zip. Images are
named `coronacases_001` or `coronacases_org_001`, and `radiopaedia_4_85506_1` or
`radiopaedia_org_covid-19-pneumonia-4_85506_1-dcm`; masks use the short names, which are the case ids.

Labels: Lung_and_Infection_Mask (0 bg, 1 left lung, 2 right lung, 3 infection) when present, else Lung_Mask (1/2)
with Infection_Mask (1 -> 3) laid over it. The 10 Coronacases scans are in HU and are windowed; the 10 Radiopaedia
scans ship already windowed to 0..255, which is recognised from their intensities (kind `window_0_255`).
"""

from __future__ import annotations

import re

import numpy as np

from covlight.benchmark import COVID, COVID_CASES
from covlight.data.importers.archives import SourceTree, find_component, normalised
from covlight.data.importers.cases import finish_case
from covlight.data.importers.checks import LabelMap, integer_values, recognise_kind
from covlight.data.importers.runner import CaseSpec, DatasetPlan
from covlight.data.importers.volumes import Volume, read_volume, same_grid
from covlight.errors import DatasetError

NAME = COVID
HELP = "COVID-19-CT-Seg: the four Zenodo zips (or their folders) -> covid19_ct_seg"
COMPONENTS = {  # role -> the zip / folder name in the Zenodo record
    "image": "COVID-19-CT-Seg_20cases",
    "lung_infection": "Lung_and_Infection_Mask",
    "lung": "Lung_Mask",
    "infection": "Infection_Mask",
}
MAPS = {
    "lung_infection": LabelMap({1: 1, 2: 2, 3: 3}),
    "lung": LabelMap({1: 1, 2: 2}),
    "infection": LabelMap({1: 3}),
}
FILE = re.compile(r"(?:^|/)(?P<stem>[^/]+)\.nii(?:\.gz)?$")
CORONACASES = re.compile(r"coronacases_(?:org_)?(\d{3})")
RADIOPAEDIA = re.compile(r"radiopaedia_(?:org_covid-19-pneumonia-)?(\d+_\d+_\d+)(?:-dcm)?")
META = {
    "source": "COVID-19 CT Lung and Infection Segmentation Dataset (Ma et al. 2020), "
              "https://zenodo.org/record/3757476 (doi:10.5281/zenodo.3757476)",
    "licence": "CC BY 4.0 (Zenodo record); the 10 Radiopaedia scans are CC BY-NC-SA 3.0 (radiopaedia.org)",
}


def add_arguments(parser) -> None:
    parser.description = __doc__


def case_id_of(stem: str) -> str | None:
    if match := CORONACASES.fullmatch(stem):
        return f"coronacases_{match[1]}"
    if match := RADIOPAEDIA.fullmatch(stem):
        return f"radiopaedia_{match[1]}"
    return None


def _index(tree: SourceTree, ignored: list[str]) -> dict[str, str]:
    files: dict[str, str] = {}
    for match, relpath in tree.match(FILE):
        case_id = case_id_of(match["stem"])
        if case_id is None:
            ignored.append(f"{tree.path.name}:{relpath}")
        elif case_id in files:
            raise DatasetError(f"{tree.path} holds two files for {case_id} ({files[case_id]}, {relpath}); keep one.")
        else:
            files[case_id] = relpath
    return files


def plans(args, staging) -> list[DatasetPlan]:
    trees = {}
    for role, name in COMPONENTS.items():
        path = find_component(args.src, normalised(name))
        if path is not None:
            trees[role] = SourceTree(path, staging)
    if "image" not in trees:
        raise DatasetError(f"{args.src}: no COVID-19-CT-Seg_20cases.zip (or folder). Download the four zips of "
                           "https://zenodo.org/record/3757476 into one folder and pass it as --src.")
    if "lung_infection" not in trees and not {"lung", "infection"} <= set(trees):
        raise DatasetError(f"{args.src}: no masks. Add Lung_and_Infection_Mask.zip (or Lung_Mask.zip and "
                           "Infection_Mask.zip) from https://zenodo.org/record/3757476 to --src.")
    ignored: list[str] = []
    index = {role: _index(tree, ignored) for role, tree in trees.items()}
    cases = []
    for case_id, relpath in sorted(index["image"].items()):
        files = {"image": trees["image"].ref(relpath)}
        if case_id in index.get("lung_infection", {}):
            files["lung_infection"] = trees["lung_infection"].ref(index["lung_infection"][case_id])
        elif all(case_id in index.get(role, {}) for role in ("lung", "infection")):
            files.update({role: trees[role].ref(index[role][case_id]) for role in ("lung", "infection")})
        else:
            raise DatasetError(f"{case_id}: the image is in {trees['image'].path} but its mask is in neither "
                               "Lung_and_Infection_Mask nor Lung_Mask + Infection_Mask. Add the mask zip(s) to "
                               "--src, or remove the image to import a subset.")
        cases.append(CaseSpec(case_id, files, _build))
    notes = [f"ignored {len(ignored)} file(s) with unrecognised names: {', '.join(ignored[:5])}"] if ignored else []
    return [DatasetPlan(COVID, cases, ["left_lung", "right_lung", "infection"], META, {"importer": NAME},
                        official=COVID_CASES, notes=notes)]


def _build(files):
    image = read_volume(files["image"].path, files["image"].name)
    if "lung_infection" in files:
        mask = _mask(image, files["lung_infection"], "lung_infection")
        label = mask.array
    else:
        lungs = _mask(image, files["lung"], "lung")
        infection = _mask(image, files["infection"], "infection")
        label = np.where(infection.array == 3, 3, lungs.array).astype(np.uint8)
        mask = lungs
    fix = "Check that the mask file belongs to this image."
    return finish_case(image, recognise_kind(image), Volume(label, image.affine, mask.name), fix=fix)


def _mask(image: Volume, local, role: str) -> Volume:
    mask = read_volume(local.path, local.name)
    same_grid(image, mask)
    return Volume(MAPS[role].apply(integer_values(mask), mask.name, _fix(role)), image.affine, mask.name)


def _fix(role: str) -> str:
    expected = {"lung_infection": "0-3", "lung": "0-2", "infection": "0-1"}[role]
    return f"{COMPONENTS[role]} masks hold values {expected}; check that this file is the official one."

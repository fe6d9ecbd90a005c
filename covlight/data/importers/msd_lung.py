"""Medical Segmentation Decathlon Task06_Lung (medicaldecathlon.com): 63 CT scans with lung tumour masks.

--src is the Task06_Lung folder or its tar: `dataset.json`, `imagesTr/lung_XXX.nii.gz`, `labelsTr/lung_XXX.nii.gz`
(the test images, without labels, are not imported). The label codes are read from the task's dataset.json and
must be 0 background, 1 cancer; the tumour becomes the lesion label 3 (dataset `msd_lung_tumour`).

--lung-masks DIR adds the lung masks released separately for these scans (after the paper's task 2) as dataset
`msd_lung`: files `lung_XXX.nii.gz` on the grid of the matching image, assumed to use the benchmark's codes
(1 left lung, 2 right lung), which are checked against the anatomy.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from covlight.benchmark import SOURCE_SPLITS, SUBTASKS, TASK3_ONLY_SPLITS
from covlight.data.importers.archives import SourceTree
from covlight.data.importers.cases import finish_case
from covlight.data.importers.checks import LabelMap, integer_values
from covlight.data.importers.runner import CaseSpec, DatasetPlan
from covlight.data.importers.volumes import Volume, read_volume, same_grid
from covlight.errors import DatasetError
from covlight.splits import load_split_file

NAME = "msd_lung"
HELP = "MSD Task06_Lung -> msd_lung_tumour (+ msd_lung with --lung-masks)"
IMAGE = re.compile(r"(?:^|/)imagesTr/(?P<case>lung_\d{3})\.nii(?:\.gz)?$")
LABEL = re.compile(r"(?:^|/)labelsTr/(?P<case>lung_\d{3})\.nii(?:\.gz)?$")
LUNG_MASK = re.compile(r"(?:^|/)(?P<case>lung_\d{3})\.nii(?:\.gz)?$")
TASK_JSON = re.compile(r"(?:^|/)dataset\.json$")
TUMOUR = LabelMap({1: 3})
LUNGS = LabelMap({1: 1, 2: 2})
META = {
    "source": "Medical Segmentation Decathlon, Task06_Lung (Antonelli et al. 2022), http://medicaldecathlon.com",
    "licence": "CC BY-SA 4.0",
}


def add_arguments(parser) -> None:
    parser.description = __doc__
    parser.add_argument("--lung-masks", type=Path, metavar="DIR",
                        help="folder (or archive) of the separately released lung masks lung_XXX.nii.gz")


def _check_codes(tree: SourceTree) -> None:
    found = tree.match(TASK_JSON)
    if not found:
        raise DatasetError(f"{tree.path}: no dataset.json; --src must be the Task06_Lung folder (or its tar).")
    ref = tree.ref(found[0][1])
    try:
        labels = json.loads(tree.read_text(ref.relpath))["labels"]
    except (ValueError, KeyError, TypeError) as error:
        raise DatasetError(f"{ref.display} cannot be read as the task's dataset.json ({error}).") from None
    if set(labels) != {"0", "1"} or not re.search(r"cancer|tumou?r|nodule", str(labels["1"]), re.I):
        raise DatasetError(f"{ref.display}: label codes {labels} are not Task06_Lung's (0 background, 1 cancer); "
                           "is this the right task?")


def plans(args, staging) -> list[DatasetPlan]:
    tree = SourceTree(args.src, staging)
    _check_codes(tree)
    images = {m["case"]: path for m, path in tree.match(IMAGE)}
    labels = {m["case"]: path for m, path in tree.match(LABEL)}
    unlabelled = sorted(set(images) - set(labels))
    if unlabelled:
        raise DatasetError(f"{args.src}: imagesTr has {unlabelled[:5]} without labelsTr files. Extract the "
                           "download completely.")
    split_file, tumour_dataset = SOURCE_SPLITS["msd", "infection"]
    split = load_split_file(split_file)[0]
    official = tuple(sorted(split["train"] + split["val"]))
    options = {"importer": NAME}
    cases = [CaseSpec(c, {"image": tree.ref(images[c]), "label": tree.ref(labels[c])}, _build_tumour)
             for c in sorted(images)]
    result = [DatasetPlan(tumour_dataset, cases, list(SUBTASKS["infection"].structures), META, options,
                          official=official)]
    if args.lung_masks is not None:
        masks_tree = SourceTree(args.lung_masks.expanduser(), staging)
        masks = {m["case"]: path for m, path in masks_tree.match(LUNG_MASK)}
        orphans = sorted(set(masks) - set(images))
        if orphans:
            raise DatasetError(f"{args.lung_masks}: lung masks {orphans[:5]} have no image in {args.src}/imagesTr.")
        cases = [CaseSpec(c, {"image": tree.ref(images[c]), "label": masks_tree.ref(masks[c])}, _build_lungs)
                 for c in sorted(masks)]
        meta = {**META, "description": "Task06_Lung images with the separately released lung masks"}
        lung_dataset = TASK3_ONLY_SPLITS["msd", "lung"][1]
        result.append(DatasetPlan(lung_dataset, cases, list(SUBTASKS["lung"].structures), meta,
                                  {**options, "lung_masks": True}, official=official))
    return result


def _read(files, labels: LabelMap, fix: str):
    image = read_volume(files["image"].path, files["image"].name)
    mask = read_volume(files["label"].path, files["label"].name)
    same_grid(image, mask)
    return image, Volume(labels.apply(integer_values(mask), mask.name, fix), image.affine, mask.name)


def _build_tumour(files):
    image, label = _read(files, TUMOUR, "Task06_Lung labels hold 0 and 1 (cancer).")
    return finish_case(image, "hu", label)


def _build_lungs(files):
    image, label = _read(files, LUNGS, "The lung masks should hold 0, 1 (left lung) and 2 (right lung).")
    return finish_case(image, "hu", label, fix="The lung masks should use 1 for the left lung and 2 for the right.")

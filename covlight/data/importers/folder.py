"""Any image/label pairs: NIfTI, NRRD, MHA/MHD volumes or 2D slices (PNG, JPG, BMP, TIFF), under a name you choose.

Files are found by patterns relative to --src with one `*`, which matches the case id: `--images "ct/*.png"
--labels "lungs/*.png"` pairs ct/0001.png with lungs/0001.png as case 0001. --labels may be given several times
(e.g. a lung mask and an infection mask), each with its own --label-map in the same order; where they overlap, a
later one wins where it is non-zero (so give infection last). A label map turns source values into canonical ones
(`"255:1"`, `"1:3,2:3"`, ranges `"7-11:1"`); any value the map does not name stops the import. Without a map the
values must already be canonical (0-3) and all three structures count as annotated; the structures a dataset
annotates (scored at test time) are otherwise the targets of its maps, so give `--label-map 1:1,2:2` for lungs only.

--intensity declares the images' kind and is checked: `hu` (air must be near -1000 HU; windowed to 0..255),
`window_0_255` (already windowed, kept) or `8bit` (pictures, kept). --split-lungs splits a mask of both lungs into
left and right by connected components and side (world coordinates for volumes; slices are read in radiological
display, image left = patient right), recorded as derived. --cip-regions reads Chest Imaging Platform label maps
(value = type * 256 + region): the region is mapped, by default left lung regions (3, 7-11) -> 1 and right lung
regions (2, 4-6, 12-14) -> 2. A 2D slice becomes a volume of one slice with spacing 1, 1, 1 mm unless --spacing
says otherwise (dataset.json records which).
"""

from __future__ import annotations

import argparse
import re

import numpy as np

from covlight.data.canonical import INTENSITY_KINDS
from covlight.data.importers.archives import SourceTree
from covlight.data.importers.cases import finish_case
from covlight.data.importers.checks import LabelMap, integer_values
from covlight.data.importers.runner import CaseSpec, DatasetPlan
from covlight.data.importers.volumes import Volume, is_slice_file, read_volume, same_grid, strip_suffix
from covlight.errors import CovlightError, DatasetError

NAME = "folder"
HELP = "any image/label pairs (NIfTI, NRRD, MHA, PNG/JPG slices) with a label map -> a dataset you name"
CANONICAL = LabelMap({1: 1, 2: 2, 3: 3})
CIP_LUNGS = LabelMap({3: 1, **dict.fromkeys(range(7, 12), 1), 2: 2, **dict.fromkeys((4, 5, 6, 12, 13, 14), 2)},
                     "3:1,7-11:1,2:2,4-6:2,12-14:2")
STRUCTURES = {1: "left_lung", 2: "right_lung", 3: "infection"}


def _label_map(text: str) -> LabelMap:
    try:
        return LabelMap.parse(text)
    except CovlightError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _name(text: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", text):
        raise argparse.ArgumentTypeError(f"--name {text!r}: use letters, digits, '_', '.', '-' (a folder name)")
    return text


def _spacing(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) not in (2, 3) or min(values, default=0) <= 0:
        raise argparse.ArgumentTypeError(f"--spacing {text!r}: give 2 or 3 positive numbers in mm, e.g. 0.7,0.7,5")
    return values


def add_arguments(parser) -> None:
    parser.description = __doc__
    parser.add_argument("--name", required=True, type=_name, help="dataset name (the folder under --dest)")
    parser.add_argument("--images", default="images/*", metavar="PATTERN",
                        help="image files relative to --src, one * for the case id (default: images/*)")
    parser.add_argument("--labels", action="append", metavar="PATTERN",
                        help="label files, one * for the case id (repeatable; default: labels/*; 'none': no labels)")
    parser.add_argument("--label-map", action="append", type=_label_map, metavar="MAP",
                        help='source:canonical values, e.g. "1:3,2:3" or "7-11:1" (one per --labels, in order)')
    parser.add_argument("--intensity", required=True, choices=INTENSITY_KINDS, help="what the image values are")
    parser.add_argument("--split-lungs", action="store_true",
                        help="split the lung voxels into left and right by connected components and side")
    parser.add_argument("--cip-regions", action="store_true",
                        help="labels are CIP codes (type*256 + region): map the region (default map: the lungs)")
    parser.add_argument("--spacing", type=_spacing, metavar="X,Y[,Z]",
                        help="voxel spacing in mm for 2D slices (columns, rows, slice), default 1,1,1")
    parser.add_argument("--source", default="", help="where the data comes from (recorded in dataset.json)")
    parser.add_argument("--licence", default="", help="the data's licence (recorded in dataset.json)")


def _pattern(text: str) -> re.Pattern:
    if text.count("*") != 1:
        raise DatasetError(f"pattern {text!r} must hold exactly one * (the case id), e.g. ct/*.png")
    head, tail = (re.escape(part) for part in text.strip("/").split("*"))
    return re.compile(rf"^{head}(?P<case>[^/]+?){tail}$")


def _find(tree: SourceTree, text: str) -> dict[str, str]:
    """case id -> relative path of the files `text` matches; two files of one case (c1.nii and c1.nii.gz) stop."""
    found: dict[str, str] = {}
    for match, path in tree.match(_pattern(text)):
        case_id = strip_suffix(match["case"]) or match["case"]
        if case_id in found:
            raise DatasetError(f"{tree.ref(found[case_id]).display} and {tree.ref(path).display} are both case "
                               f"{case_id!r} (matching {text!r}), and covlight cannot tell which one is meant: keep "
                               "one of them in --src.")
        found[case_id] = path
    if not found:
        raise DatasetError(f"{tree.path}: no file matches {text!r}. Patterns are relative to --src, with one * "
                           "standing for the case id (e.g. --images 'ct/*.png').")
    return found


def plans(args, staging) -> list[DatasetPlan]:
    label_patterns = args.labels or ["labels/*"]
    if label_patterns == ["none"]:
        label_patterns = []
    maps = args.label_map or []
    if maps and len(maps) != len(label_patterns):
        raise DatasetError(f"{len(maps)} --label-map for {len(label_patterns)} --labels: give one per --labels, "
                           "in the same order.")
    maps = maps or [CIP_LUNGS if args.cip_regions else CANONICAL] * len(label_patterns)
    tree = SourceTree(args.src, staging)
    images = _find(tree, args.images)
    labels = [_find(tree, pattern) for pattern in label_patterns]
    slices = {is_slice_file(path) for path in images.values()}
    if len(slices) > 1:
        raise DatasetError(f"{args.src}: {args.images!r} matches both 2D slices and volumes; import them separately.")
    single_slices = slices == {True}
    if args.spacing and not single_slices:
        raise DatasetError("--spacing is for 2D slices only: volumes carry their spacing in the file header.")
    for found in labels:
        orphans = [found[case_id] for case_id in sorted(found) if case_id not in images]
        if orphans:
            raise DatasetError(f"{_few([tree.ref(path).display for path in orphans])}: label file(s) with no image "
                               f"matching {args.images!r}. Add the image(s), or remove the label file(s): an "
                               "unpaired mask is never dropped silently.")
    cases = []
    for case_id, path in sorted(images.items()):
        lacking = [p for p, found in zip(label_patterns, labels, strict=True) if case_id not in found]
        if lacking:
            raise DatasetError(f"{tree.ref(path).display}: no label file for case {case_id!r} matching "
                               f"{lacking[0]!r}. Add it, or remove the image.")
        files = {"image": tree.ref(path)} | {f"label{i}": tree.ref(found[case_id]) for i, found in enumerate(labels)}
        cases.append(CaseSpec(case_id, files, _builder(args, maps)))
    annotated = sorted({STRUCTURES[v] for m in maps for v in m.mapping.values() if v} |
                       ({"left_lung", "right_lung"} if args.split_lungs else set()),
                       key=list(STRUCTURES.values()).index)
    meta = {"source": args.source or str(args.src), "licence": args.licence or "unknown (not given)"}
    if args.split_lungs:
        meta["derived"] = {"left_right": "a both-lungs mask split into left and right by connected components and "
                                         + ("image side (radiological display: image left = patient right)"
                                            if single_slices else "world-coordinate side (RAS+ x)")}
    if single_slices:
        meta["slices"] = {"display": "radiological (image left = patient right, top = anterior)",
                          "spacing_mm": args.spacing or [1.0, 1.0, 1.0],
                          "spacing_given": bool(args.spacing),
                          "note": "2D slices stored as NIfTI volumes of one slice"}
    options = {"importer": NAME, "images": args.images, "labels": label_patterns, "label_maps": [m.text for m in maps],
               "intensity": args.intensity, "split_lungs": args.split_lungs, "cip_regions": args.cip_regions,
               "spacing": args.spacing}
    return [DatasetPlan(args.name, cases, annotated, meta, options)]


def _few(names: list[str], count: int = 5) -> str:
    return ", ".join(names[:count]) + (f" ... (+{len(names) - count} more)" if len(names) > count else "")


def _builder(args, maps: list[LabelMap]):
    def build(files):
        image = read_volume(files["image"].path, files["image"].name, args.spacing)
        if not maps:
            return finish_case(image, args.intensity)
        label = np.zeros(image.array.shape, np.uint8)
        for i, labels in enumerate(maps):
            local = files[f"label{i}"]
            mask = read_volume(local.path, local.name, args.spacing)
            same_grid(image, mask)
            values = integer_values(mask)
            if args.cip_regions:
                values = values & 0xFF
            mapped = labels.apply(values, mask.name)
            label = np.where(mapped > 0, mapped, label).astype(np.uint8)
        return finish_case(image, args.intensity, Volume(label, image.affine, files["label0"].name),
                           split=args.split_lungs)

    return build

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

Sparse annotations (volumes drawn on some axial slices only): --annotated-slices 12,40,71 (0-based indices along the
file's third axis, for every case; or a JSON file {case id: [slices]}) marks every other slice not annotated; a map
target `unknown` (--label-map 128:unknown) marks the voxels of a value that means "not drawn"; --empty-slices
unannotated takes the mask's empty slices as not annotated. Such voxels get the canonical value 255 and dataset.json
lists each partial case's annotated slices. A voxel not annotated in any of the masks of --labels is not annotated.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np

from covlight.benchmark import UNKNOWN_LABEL
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
EMPTY_SLICES = ("background", "unannotated")


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


def _slices(text: str) -> list[int] | Path:
    if text.endswith(".json"):
        return Path(text)
    try:
        values = sorted({int(v) for v in text.split(",") if v.strip()})
    except ValueError:
        values = []
    if not values or values[0] < 0:
        raise argparse.ArgumentTypeError(f"--annotated-slices {text!r}: give slice indices (0-based) such as 12,40,71, "
                                         "or a JSON file {case id: [slices]}")
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
    parser.add_argument("--annotated-slices", type=_slices, metavar="Z,Z,...|FILE.json",
                        help="volumes: the only axial slices drawn (0-based, along the file's third axis), for every "
                             "case, or per case from a JSON file {case id: [slices]}; the others are not annotated")
    parser.add_argument("--empty-slices", choices=EMPTY_SLICES, default="background",
                        help="volumes: a slice empty in every mask is background (default) or not annotated")
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
    if single_slices and (args.annotated_slices or args.empty_slices != "background"):
        raise DatasetError("--annotated-slices and --empty-slices are for volumes: in a slice set each picture is a "
                           "case (import the pictures without a mask with --labels none as another dataset, or mark "
                           "a value of a partly drawn mask with --label-map VALUE:unknown).")
    if args.annotated_slices and args.empty_slices != "background":
        raise DatasetError("--annotated-slices and --empty-slices unannotated both say which slices are drawn: give "
                           "one of them.")
    if args.annotated_slices and not label_patterns:
        raise DatasetError("--annotated-slices needs masks (--labels): a dataset without labels has no annotated slice.")
    drawn = _annotated_slices(args.annotated_slices, sorted(images))
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
        cases.append(CaseSpec(case_id, files, _builder(args, maps, drawn.get(case_id))))
    annotated = sorted({STRUCTURES[v] for m in maps for v in m.mapping.values() if v in STRUCTURES} |
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
               "spacing": args.spacing, "annotated_slices": drawn or None, "empty_slices": args.empty_slices}
    return [DatasetPlan(args.name, cases, annotated, meta, options)]


def _few(names: list[str], count: int = 5) -> str:
    return ", ".join(names[:count]) + (f" ... (+{len(names) - count} more)" if len(names) > count else "")


def _annotated_slices(given, case_ids: list[str]) -> dict[str, list[int]]:
    """case id -> the slices --annotated-slices names (empty without the option)."""
    if not given:
        return {}
    if isinstance(given, list):
        return dict.fromkeys(case_ids, given)
    try:
        table = json.loads(given.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise DatasetError(f"--annotated-slices {given}: cannot be read as JSON ({error}); give a file "
                           '{"case id": [slice, ...]}') from None
    lacking = [c for c in case_ids if c not in table]
    if not isinstance(table, dict) or lacking:
        raise DatasetError(f"--annotated-slices {given}: no slices for case(s) {_few(lacking)}; give each case its "
                           "list of annotated slices (0-based)")
    return {c: sorted({int(z) for z in table[c]}) for c in case_ids}


def sparse_label(label: np.ndarray, unknown: np.ndarray, drawn: list[int] | None, empty_unannotated: bool,
                 name: str) -> np.ndarray:
    """The combined label (source voxel order) with its voxels not annotated set to UNKNOWN_LABEL: those `unknown`
    in a mask, the slices `drawn` does not list (checked: they hold no drawing), and, with `empty_unannotated`, the
    slices no mask draws on."""
    label = label.copy()
    depth = label.shape[2]
    if drawn is not None:
        outside = [z for z in drawn if z >= depth]
        if outside:
            raise DatasetError(f"{name}: --annotated-slices names slice(s) {outside} but the mask has {depth} slices "
                               f"(0..{depth - 1}); give 0-based indices along the file's third axis.")
        hidden = np.ones(depth, bool)
        hidden[drawn] = False
        drawn_elsewhere = [int(z) for z in np.flatnonzero(hidden & (label > 0).any(axis=(0, 1)))]
        if drawn_elsewhere:
            raise DatasetError(f"{name}: slice(s) {_few([str(z) for z in drawn_elsewhere])} hold a drawing but "
                               f"--annotated-slices does not list them (it lists {drawn}). Add them to "
                               "--annotated-slices (0-based, along the file's third axis), or check the mask.")
        all_unknown = [z for z in drawn if unknown[:, :, z].all()]
        if all_unknown:
            raise DatasetError(f"{name}: --annotated-slices lists slice(s) {all_unknown}, which the mask marks wholly "
                               "not annotated. Drop them from --annotated-slices, or check the mask.")
        unknown = unknown | hidden[None, None, :]
    if empty_unannotated:
        unknown = unknown | ~(label > 0).any(axis=(0, 1))[None, None, :]
    label[unknown] = UNKNOWN_LABEL
    if unknown.all():
        raise DatasetError(f"{name}: no voxel is annotated. Import the case without its mask (as another dataset, "
                           "--labels none) or check --annotated-slices / --empty-slices.")
    return label


def _builder(args, maps: list[LabelMap], drawn: list[int] | None):
    def build(files):
        image = read_volume(files["image"].path, files["image"].name, args.spacing)
        if not maps:
            return finish_case(image, args.intensity)
        label = np.zeros(image.array.shape, np.uint8)
        unknown = np.zeros(image.array.shape, bool)
        for i, labels in enumerate(maps):
            local = files[f"label{i}"]
            mask = read_volume(local.path, local.name, args.spacing)
            same_grid(image, mask)
            values = integer_values(mask)
            if args.cip_regions:
                values = values & 0xFF
            mapped = labels.apply(values, mask.name)
            unknown |= mapped == UNKNOWN_LABEL
            label = np.where((mapped > 0) & (mapped != UNKNOWN_LABEL), mapped, label).astype(np.uint8)
        if drawn is not None or unknown.any() or args.empty_slices == "unannotated":
            label = sparse_label(label, unknown, drawn, args.empty_slices == "unannotated", files["label0"].name)
        return finish_case(image, args.intensity, Volume(label, image.affine, files["label0"].name),
                           split=args.split_lungs)

    return build

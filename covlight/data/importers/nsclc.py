"""NSCLC: PleThora thoracic cavity and pleural effusion masks (TCIA) on the NSCLC-Radiomics CT scans.

--src holds the PleThora downloads, `Thoracic_Cavities/` and `Effusions/` (folders or their zips, e.g.
`PleThora Thoracic_Cavities June 2020.zip`), and the CT as `NSCLC-Radiomics/` (or --ct PATH): per patient either a
DICOM tree as TCIA downloads it (`LUNG1-001/<study>/<series>/1-001.dcm ...`; the series with most files is the
CT, read with SimpleITK's ImageSeriesReader) or a NIfTI file `LUNG1-001.nii.gz` (`LUNG1-001_0000.nii.gz` also
accepted).

Assumptions, from the PleThora documentation on TCIA and public loaders of these files:
- File names: `Thoracic_Cavities/LUNG1-001/LUNG1-001_thor_cav_primary_reviewer.nii.gz` and
  `Effusions/LUNG1-001/LUNG1-001_effusion_first_reviewer.nii.gz` (the primary / first reviewer's masks are used).
- Orientation: TCIA warns that the masks are stored "RPI" while the DICOM series are "RAI", so viewers that trust
  the NIfTI header show them wrongly. The mask array is therefore read as x from the patient's right to left,
  y from posterior to anterior, z from inferior to superior (nibabel codes L, A, S) on the CT's full voxel grid;
  its header is used only when it agrees with the CT's geometry. The lungs are then checked to lie over air.
- Values: the thoracic cavity masks mark the two cavities either with one value or with two; rather than trust
  a code for left and right, each cavity's side is taken from its position (recorded as `left_right: derived`).
  Effusion masks: any of 1, 2 -> 3.
Case ids are the patient ids (LUNG1-001), as in the official split files (Task201 lungs, Task204 effusions).
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath

import numpy as np

from covlight.benchmark import SOURCE_SPLITS, SUBTASKS
from covlight.data.importers.archives import SourceTree, find_component
from covlight.data.importers.cases import finish_case
from covlight.data.importers.checks import LabelMap, integer_values, world_x
from covlight.data.importers.runner import CaseSpec, DatasetPlan
from covlight.data.importers.volumes import Volume, canonical, read_dicom_series, read_volume
from covlight.errors import DatasetError
from covlight.splits import load_split_file

NAME = "nsclc"
HELP = "NSCLC-Radiomics CT + PleThora masks -> nsclc_lung (thoracic cavities), nsclc_effusion"
PARTS = {  # --part -> (PleThora folder, mask file pattern, subtask); dataset, split file: benchmark.SOURCE_SPLITS
    "lung": ("thoracic_cavities", re.compile(r"(?:^|/)(?P<case>LUNG1-\d{3})_thor_cav_primary_reviewer\.nii(?:\.gz)?$"),
             "lung"),
    "effusion": ("effusions", re.compile(r"(?:^|/)(?P<case>LUNG1-\d{3})_effusion_first_reviewer\.nii(?:\.gz)?$"),
                 "infection"),
}
CT_NIFTI = re.compile(r"(?:^|/)(?P<case>LUNG1-\d{3})(?:_0000)?\.nii(?:\.gz)?$")
CT_DICOM = re.compile(r"(?:^|/)(?P<case>LUNG1-\d{3})/(?:[^/]+/)*[^/]+\.dcm$", re.IGNORECASE)
EFFUSION = LabelMap({1: 3, 2: 3})
CAVITY_CODES = LabelMap({1: 1, 2: 2})  # which code is which side is not trusted: see _cavities
META = {
    "source": "NSCLC-Radiomics CT (TCIA, doi:10.7937/K9/TCIA.2015.PF0M9REI) with PleThora thoracic cavity and "
              "pleural effusion segmentations (Kiser et al. 2020, TCIA, doi:10.7937/tcia.2020.6c7y-gq39)",
    "licence": "CT: CC BY-NC 3.0 (TCIA NSCLC-Radiomics); PleThora masks: CC BY 3.0",
}


def add_arguments(parser) -> None:
    parser.description = __doc__
    parser.add_argument("--part", choices=tuple(PARTS), help="import one part only (default: every part found)")
    parser.add_argument("--ct", type=Path,
                        help="the NSCLC-Radiomics CT folder or archive (default: NSCLC-Radiomics in --src)")


def _ct_index(tree: SourceTree) -> dict:
    """case -> SourceRef of its CT: a NIfTI file, or the DICOM folder holding the most .dcm files."""
    index = {m["case"]: tree.ref(path) for m, path in tree.match(CT_NIFTI)}
    folders: dict[str, dict[str, int]] = {}
    for match, path in tree.match(CT_DICOM):
        folder = str(PurePosixPath(path).parent)
        folders.setdefault(match["case"], {}).setdefault(folder, 0)
        folders[match["case"]][folder] += 1
    for case, counts in folders.items():
        index.setdefault(case, tree.ref(max(counts, key=counts.get), is_dir=True))
    return index


def plans(args, staging) -> list[DatasetPlan]:
    ct_path = args.ct.expanduser() if args.ct else find_component(args.src, "nsclc_radiomics", exact=False)
    if ct_path is None:
        raise DatasetError(f"{args.src}: no NSCLC-Radiomics CT folder. Download the CT series from TCIA "
                           "(NSCLC-Radiomics) into --src, or point --ct at them.")
    cts = _ct_index(SourceTree(ct_path, staging))
    parts = [args.part] if args.part else list(PARTS)
    result = []
    for part in parts:
        folder, pattern, subtask = PARTS[part]
        split_file, dataset = SOURCE_SPLITS["nsclc", subtask]
        annotated = list(SUBTASKS[subtask].structures)
        path = find_component(args.src, folder, exact=False)
        if path is None:
            continue
        tree = SourceTree(path, staging)
        cases = []
        for match, relpath in tree.match(pattern):
            case_id = match["case"]
            if case_id not in cts:
                raise DatasetError(f"{tree.ref(relpath).display}: no CT for {case_id} in {ct_path} (a DICOM "
                                   f"series under {case_id}/ or {case_id}.nii.gz). Add it, or remove the mask.")
            cases.append(CaseSpec(case_id, {"image": cts[case_id], "label": tree.ref(relpath)},
                                  _build_lungs if part == "lung" else _build_effusion))
        split = load_split_file(split_file)[0]
        meta = {**META, "description": f"PleThora {path.name} on NSCLC-Radiomics CT"}
        if part == "lung":
            meta["derived"] = {"left_right": "each thoracic cavity's side taken from its position (RAS+ world x)"}
        result.append(DatasetPlan(dataset, cases, annotated, meta, {"importer": NAME, "part": part},
                                  official=tuple(sorted(split["train"] + split["val"]))))
    if not result:
        raise DatasetError(f"{args.src}: no PleThora Thoracic_Cavities or Effusions (folders or zips). Download "
                           "them from TCIA (PleThora) into --src.")
    return result


def _read_ct(local) -> Volume:
    if local.path.is_dir():
        return read_dicom_series(local.path, local.name)
    return read_volume(local.path, local.name)


def _mask_on_ct(ct: Volume, local) -> tuple[np.ndarray, str]:
    """The PleThora mask's integer array on the canonical CT grid, and how it was placed (module docstring)."""
    mask = read_volume(local.path, local.name)
    values = integer_values(mask)
    by_header = canonical(Volume(values, mask.affine, mask.name))
    if by_header.array.shape == ct.array.shape and np.allclose(by_header.affine, ct.affine, rtol=1e-4, atol=1e-2):
        return by_header.array, "header"
    if values.shape != ct.array.shape:
        raise DatasetError(
            f"{local.name}: mask shape {values.shape} does not match the CT's {ct.array.shape} ({ct.name}). The "
            "mask belongs to another scan or series: check the patient id and which series is the CT."
        )
    return values[::-1, :, :], "plethora_array_order"  # stored L, A, S -> R, A, S


def _build_lungs(files):
    ct = canonical(_read_ct(files["image"]))
    name = files["label"].name
    values, placed = _mask_on_ct(ct, files["label"])
    codes = CAVITY_CODES.apply(values, name, "PleThora thoracic cavity masks hold 0-2.")
    notes = {"mask_alignment": placed}
    if set(np.unique(codes)) == {0, 1, 2}:  # two cavities, two codes: the one further left is the left lung
        left = 1 if world_x(codes == 1, ct.affine) < world_x(codes == 2, ct.affine) else 2
        cavities = np.where(codes == left, 1, np.where(codes > 0, 2, 0)).astype(np.uint8)
        return finish_case(ct, "hu", Volume(cavities, ct.affine, name), notes={**notes, "left_right": "derived"})
    return finish_case(ct, "hu", Volume(codes, ct.affine, name), split=True, notes=notes)  # one code: by components


def _build_effusion(files):
    ct = canonical(_read_ct(files["image"]))
    values, placed = _mask_on_ct(ct, files["label"])
    effusion = EFFUSION.apply(values, files["label"].name, "PleThora effusion masks hold 0, 1 and 2.")
    return finish_case(ct, "hu", Volume(effusion, ct.affine, files["label"].name), notes={"mask_alignment": placed})

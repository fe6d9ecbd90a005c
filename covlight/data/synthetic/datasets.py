"""Phantom datasets on disk: covlight's canonical layout, or the layout of the official COVID-19-CT-Seg download
(for importer tests)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from scipy import ndimage
from tqdm import tqdm

from covlight.atomic import write_json
from covlight.benchmark import COVID_CASES  # the official ids, so the official Task 1 folds apply to phantoms
from covlight.data.canonical import (
    affine_from_spacing,
    hu_to_0_255,
    save_nifti,
    write_case,
    write_dataset_json,
)
from covlight.data.synthetic.anatomy import SIZES
from covlight.data.synthetic.lesions import KINDS
from covlight.data.synthetic.scan import Phantom, make_phantom
from covlight.errors import CovlightError, DatasetError

LAYOUTS = ("canonical", "official")
MARKER = ".covlight-phantoms.json"  # written first: says which phantom dataset a folder holds
OFFICIAL_FOLDERS = ("COVID-19-CT-Seg_20cases", "Lung_Mask", "Infection_Mask", "Lung_and_Infection_Mask")


def case_ids(kind: str = "covid", cases: int = 20) -> list[str]:
    """The first `cases` case ids of a kind: the official ids for COVID, `phantom_<kind>_NNN` otherwise."""
    if kind not in KINDS:
        raise CovlightError(f"kind {kind!r} is not one of {KINDS}")
    if kind == "covid":
        if not 1 <= cases <= len(COVID_CASES):
            raise CovlightError(f"--cases must be 1..{len(COVID_CASES)} for COVID phantoms (the official ids), got {cases}")
        return list(COVID_CASES[:cases])
    if cases < 1:
        raise CovlightError(f"--cases must be at least 1, got {cases}")
    return [f"phantom_{kind}_{i:03d}" for i in range(1, cases + 1)]


def lungs_with_lesions(label: np.ndarray, kind: str) -> np.ndarray:
    """Left (1) / right (2) lung including the lesions inside them, as the official Lung_Mask has it: each
    lesion voxel takes the side of the nearest lung voxel. A pleural effusion is outside the lungs."""
    if kind == "effusion" or not (label == 3).any():
        return np.where(label == 3, 0, label).astype(np.uint8)
    nearest = ndimage.distance_transform_edt(~np.isin(label, (1, 2)), return_distances=False, return_indices=True)
    return np.where(label == 3, label[tuple(nearest)], label).astype(np.uint8)


def official_file_stem(case_id: str) -> str:
    """The image file name of a case in the Zenodo download (Coronacases images are `coronacases_org_NNN`)."""
    return case_id.replace("coronacases_", "coronacases_org_", 1) if case_id.startswith("coronacases_") else case_id


def _official_affine(spacing, shape) -> np.ndarray:
    """LPS-like affine (negative x and y diagonal) for an array flipped along x and y, same world positions as
    the canonical affine: the importer must reorient it back."""
    affine = affine_from_spacing(spacing)
    affine[0, 0], affine[1, 1] = -spacing[0], -spacing[1]
    affine[0, 3], affine[1, 3] = (shape[0] - 1) * spacing[0], (shape[1] - 1) * spacing[1]
    return affine


def _write_official(out: Path, case_id: str, phantom: Phantom, kind: str) -> None:
    flip = (slice(None, None, -1), slice(None, None, -1), slice(None))
    affine = _official_affine(phantom.spacing, phantom.label.shape)
    if case_id.startswith("coronacases_"):  # raw HU, as the Coronacases scans ship
        image = np.clip(np.rint(phantom.image_hu), -1024, 3071).astype(np.int16)
    else:  # Radiopaedia cases ship already windowed to [-1250, 250] and scaled to 0..255
        image = np.rint(hu_to_0_255(phantom.image_hu)).astype(np.uint8)
    label = phantom.label
    masks = {
        "COVID-19-CT-Seg_20cases": (official_file_stem(case_id), image),
        "Lung_Mask": (case_id, lungs_with_lesions(label, kind)),
        "Infection_Mask": (case_id, (label == 3).astype(np.uint8)),
        "Lung_and_Infection_Mask": (case_id, label),
    }
    for folder, (stem, array) in masks.items():
        save_nifti(out / folder / f"{stem}.nii.gz", array[flip], affine)


def _official_complete(out: Path, cases: list[str]) -> bool:
    return all((out / folder / f"{official_file_stem(c) if folder == OFFICIAL_FOLDERS[0] else c}.nii.gz").is_file()
               for folder in OFFICIAL_FOLDERS for c in cases)


def write_phantom_dataset(
    out: Path,
    cases: int | list[str] = 20,
    seed: int = 0,
    layout: str = "canonical",
    kind: str = "covid",
    size: str = "demo",
    progress: bool = True,
) -> Path:
    """Write a phantom dataset into `out` (canonical layout with `dataset.json`, or the official download's).

    A rerun with the same arguments is a no-op once complete (and redoes an interrupted one); a non-empty folder
    holding anything else is refused.
    """
    if layout not in LAYOUTS:
        raise CovlightError(f"layout {layout!r} is not one of {LAYOUTS}")
    if size not in SIZES:
        raise CovlightError(f"size {size!r} is not one of {tuple(SIZES)}")
    cases = case_ids(kind, cases) if isinstance(cases, int) else [str(c) for c in cases]
    out = Path(out).expanduser()
    recipe = {"generator": "covlight.phantoms", "layout": layout, "kind": kind, "size": size, "seed": int(seed),
              "cases": cases}
    marker = out / MARKER
    if out.exists() and any(out.iterdir()):
        found = _read_marker(marker)
        if found != recipe:
            what = "files that are not a covlight phantom dataset"
            if found is not None:
                differences = [f"{k} {found.get(k)!r} (asked: {recipe[k]!r})" for k in recipe
                               if found.get(k) != recipe[k]]
                what = f"a different phantom dataset: {'; '.join(differences)}"
            raise DatasetError(f"{out} is not empty and holds {what}. Choose an empty or new folder for --out, "
                               f"or delete {out} first.")
        if (out / "dataset.json").is_file() if layout == "canonical" else _official_complete(out, cases):
            return out
    write_json(marker, recipe)

    entries = {}
    bar = tqdm(cases, unit="case", disable=not progress)
    for case_id in bar:
        bar.set_description(f"phantom {case_id}")
        phantom = make_phantom(case_id, seed, size=size, kind=kind)
        if layout == "official":
            _write_official(out, case_id, phantom, kind)
        else:
            entries[case_id] = write_case(out, case_id, hu_to_0_255(phantom.image_hu), phantom.label,
                                          affine_from_spacing(phantom.spacing), intensity="hu")
    if layout == "canonical":
        write_dataset_json(out, f"phantom_{kind}", entries, ["left_lung", "right_lung", "infection"],
                           source="covlight.phantoms", licence="CC0 (synthetic)",
                           description=f"synthetic chest CT phantoms ({kind}, {size} size, seed {seed})",
                           phantom={k: recipe[k] for k in ("kind", "size", "seed")})
    return out


def _read_marker(path: Path) -> dict | None:
    try:
        found = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) else None

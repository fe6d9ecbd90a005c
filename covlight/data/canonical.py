"""The canonical dataset folder: the one layout everything downstream of `prepare` reads.

    <root>/images/<case>.nii.gz   float32, 0..255 (HU windowed to [-1250, 250] and scaled)
    <root>/labels/<case>.nii.gz   uint8, canonical values (0 bg, 1 left lung, 2 right lung, 3 infection; 255 not
                                  annotated, in a partially annotated case)
    <root>/dataset.json           written last: its presence marks the folder complete

Arrays are in nibabel's (x, y, z) order, RAS+ orientation; spacing in the same order (mm).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from covlight.atomic import replacing, write_json
from covlight.benchmark import LABELS, UNKNOWN_LABEL
from covlight.errors import DatasetError

FORMAT_VERSION = 1
INTENSITY_KINDS = ("hu", "window_0_255", "8bit")
HU_WINDOW = (-1250.0, 250.0)


def hu_to_0_255(hu: np.ndarray) -> np.ndarray:
    """Window HU to [-1250, 250] and scale to [0, 255] (the benchmark's recommendation), float32."""
    low, high = HU_WINDOW
    return ((np.clip(hu.astype(np.float32), low, high) - low) * (255.0 / (high - low))).astype(np.float32)


def affine_from_spacing(spacing) -> np.ndarray:
    """A canonical (RAS+, positive diagonal) affine for the given voxel spacing."""
    affine = np.eye(4)
    affine[0, 0], affine[1, 1], affine[2, 2] = (float(s) for s in spacing)
    return affine


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_nifti(path: Path, array: np.ndarray, affine: np.ndarray) -> None:
    """Write a NIfTI file under a temporary name and rename it when whole, so no half-file looks complete."""
    image = nib.Nifti1Image(array, affine)
    image.header.set_xyzt_units("mm")
    with replacing(path) as tmp:
        nib.save(image, tmp)


def write_case(
    root: Path,
    case_id: str,
    image: np.ndarray,
    label: np.ndarray | None,
    affine: np.ndarray,
    intensity: str,
) -> dict:
    """Write one case (image already 0..255) and return its `dataset.json` entry."""
    if intensity not in INTENSITY_KINDS:
        raise ValueError(f"intensity kind {intensity!r} is not one of {INTENSITY_KINDS}")
    root = Path(root)
    image_path = root / "images" / f"{case_id}.nii.gz"
    save_nifti(image_path, np.asarray(image, dtype=np.float32), affine)
    entry = {
        "shape": [int(n) for n in image.shape],
        "spacing": [round(float(s), 6) for s in nib.affines.voxel_sizes(affine)],
        "intensity": intensity,
        "image_sha256": sha256_of(image_path),
    }
    if label is not None:
        if label.shape != image.shape:
            raise DatasetError(f"{case_id}: label shape {label.shape} differs from image shape {image.shape}")
        label = np.asarray(label, dtype=np.uint8)
        label_path = root / "labels" / f"{case_id}.nii.gz"
        save_nifti(label_path, label, affine)
        entry["label_sha256"] = sha256_of(label_path)
        unknown = label == UNKNOWN_LABEL
        if unknown.any():
            entry["annotated_slices"] = annotated_slices_of(label)
    return entry


def annotated_slices_of(label: np.ndarray) -> list[int]:
    """The axial (z) slices of a label volume that hold at least one annotated voxel (not UNKNOWN_LABEL)."""
    return [int(z) for z in np.flatnonzero((label != UNKNOWN_LABEL).any(axis=(0, 1)))]


def write_dataset_json(root: Path, name: str, cases: dict, annotated: list[str], **extra) -> Path:
    """Write `dataset.json` last, atomically: it marks the folder complete."""
    unknown = [s for s in annotated if s not in LABELS or s == "background"]
    if unknown:
        raise ValueError(f"unknown structures {unknown}; known: {list(LABELS)[1:]}")
    payload = {
        "format_version": FORMAT_VERSION,
        "name": name,
        **extra,
        "labels": LABELS,
        "unknown_label": UNKNOWN_LABEL,
        "annotated": list(annotated),
        "partial_cases": sorted(c for c, entry in cases.items() if "annotated_slices" in entry),
        "cases": cases,
    }
    path = Path(root) / "dataset.json"
    write_json(path, payload)
    return path


def slice_spacing_note(meta: dict) -> str | None:
    """What to say when a slice set (dataset.json `meta`) gives no pixel spacing: it is scored with spacing 1."""
    slices = meta.get("slices")
    if not isinstance(slices, dict) or slices.get("spacing_given", True):
        return None
    return (f"{meta.get('name')}: 2D slices without a pixel spacing, scored with spacing 1 (NSD tolerances of 1 mm "
            "and 3 mm count pixels); give --spacing at import when the spacing is known")


def _damaged(path: Path, error: Exception) -> DatasetError:
    return DatasetError(
        f"{path} cannot be read ({type(error).__name__}: {error}): the file is damaged or incomplete. Delete it and "
        "re-run the import of this dataset (a rerun re-imports the cases whose files are missing)."
    )


def open_nifti(path: Path) -> nib.Nifti1Image:
    """A canonical NIfTI file, header read, data not yet: one clear error when it is missing or not NIfTI."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path} is missing. Re-run the import of this dataset, which re-imports missing files.")
    try:
        return nib.load(str(path), mmap=False)
    except Exception as error:  # nibabel and gzip raise many kinds for a damaged file
        raise _damaged(path, error) from None


def read_nifti(path: Path) -> tuple[np.ndarray, nib.Nifti1Image]:
    """A canonical 3D volume, whole, and its NIfTI image (header and affine); one clear error when damaged.

    Read with nibabel, never TorchIO's default SimpleITK reader: its NIfTI library silently zero-fills a truncated
    .nii.gz and turns NaN/inf voxels into 0, so a damaged case would train as if it were whole.
    """
    image = open_nifti(path)
    try:
        data = np.asanyarray(image.dataobj)
    except Exception as error:  # a truncated .nii.gz: EOFError, zlib.error, OSError
        raise _damaged(Path(path), error) from None
    if data.ndim != 3:
        raise DatasetError(f"{path}: expected a 3D volume, got shape {data.shape}. Re-import the case.")
    return data, image


def read_canonical(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A canonical file as a (1, x, y, z) array and its affine: the `reader` of covlight's TorchIO images."""
    data, image = read_nifti(path)
    return data[None], image.affine


def grid_difference(image: nib.Nifti1Image, label: nib.Nifti1Image, atol: float = 1e-3) -> str | None:
    """What differs between the voxel grids of an image and its label (shape, spacing, origin, direction),
    or None when they share one grid."""
    if label.shape != image.shape:
        return f"shape {label.shape} differs from the image's {image.shape}"
    spacing, label_spacing = nib.affines.voxel_sizes(image.affine), nib.affines.voxel_sizes(label.affine)
    if not np.allclose(label_spacing, spacing, atol=atol):
        return (f"spacing {np.round(label_spacing, 4).tolist()} mm differs from the image's "
                f"{np.round(spacing, 4).tolist()} mm")
    offset = float(np.abs(label.affine[:3, 3] - image.affine[:3, 3]).max())
    if offset > atol:
        return f"origin is {offset:.3g} mm away from the image's"
    if not np.allclose(label.affine[:3, :3], image.affine[:3, :3], atol=atol):
        return "direction (axis orientation) differs from the image's"
    return None


@dataclass
class CanonicalDataset:
    """A canonical dataset folder as read from its `dataset.json`."""

    root: Path
    name: str
    annotated: list[str]
    cases: dict[str, dict]
    meta: dict = field(default_factory=dict)

    def image_path(self, case_id: str) -> Path:
        return self.root / "images" / f"{case_id}.nii.gz"

    def label_path(self, case_id: str) -> Path:
        return self.root / "labels" / f"{case_id}.nii.gz"

    def has_label(self, case_id: str) -> bool:
        return "label_sha256" in self.cases[case_id]

    def annotated_slices(self, case_id: str) -> tuple[int, ...] | None:
        """The axial slices of a partially annotated case that hold annotated voxels (its label file marks the rest
        UNKNOWN_LABEL); None for a fully annotated case."""
        slices = self.cases[case_id].get("annotated_slices")
        return None if slices is None else tuple(int(z) for z in slices)

    def require(self, case_ids, what: str = "the split") -> None:
        """Fail with one clear message when `case_ids` name cases this dataset does not hold."""
        missing = [c for c in case_ids if c not in self.cases]
        if missing:
            raise DatasetError(
                f"{self.root / 'dataset.json'} has no case(s) {missing[:5]}{' ...' if len(missing) > 5 else ''} "
                f"named by {what}. Import the missing cases (python -m covlight.prepare ...) or point "
                f"data.root at the right dataset folder."
            )
        for case_id in case_ids:
            paths = [self.image_path(case_id)] + ([self.label_path(case_id)] if self.has_label(case_id) else [])
            for path in paths:
                if not path.is_file():
                    raise DatasetError(
                        f"{path} is listed in {self.root / 'dataset.json'} but missing on disk. "
                        "Re-run the import for this dataset."
                    )


def read_dataset(root: Path) -> CanonicalDataset:
    """Read a canonical dataset folder, with one clear error when it is missing or incomplete."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetError(
            f"dataset folder {root} does not exist. Create it with `python -m covlight.prepare ...` "
            f"(real data) or `python -m covlight.phantoms --out {root}` (synthetic), or set data.root."
        )
    path = root / "dataset.json"
    if not path.is_file():
        raise DatasetError(
            f"{path} is missing: {root} is not a complete canonical dataset (an import may have been "
            "interrupted). Re-run the import, which resumes where it stopped."
        )
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise DatasetError(f"{path} is not valid JSON ({error}). Re-run the import with --force.") from None
    for key in ("name", "annotated", "cases"):
        if key not in meta:
            raise DatasetError(f"{path} has no '{key}' entry. Re-run the import with --force.")
    return CanonicalDataset(root=root, name=meta["name"], annotated=list(meta["annotated"]),
                            cases=dict(meta["cases"]), meta=meta)
